"""focusdiff: the MLOps system around Pair-GRPO (FocusDiff, arXiv 2506.05501).

Stages live in sub-packages (data, shapes, model, judge, train, eval, registry);
each is one library function with thin entry points: the `focusdiff` CLI (which
`dvc.yaml` calls), Prefect tasks in `flows/`, and tests.
"""

__version__ = "0.1.0"
