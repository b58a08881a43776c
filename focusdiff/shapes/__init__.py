"""ShapesWorld: a small synthetic world of colored shapes where every stage runs for real.

scenes (world.py) -> pixels (render.py) -> captions (grammar.py) -> pairs and splits
(generate.py) -> dataset (build.py); the exact checker (checker.py) parses pixels back
into a scene and verifies captions clause by clause: the held-out evaluator.
"""
