"""Build the ShapesWorld paired dataset (the embedded default's `data` stage).

Each split draws from its own seed; the train sampler never produces a held-out
(color, shape) combination, while val/test may, so test measures generalization.
A val/test pair whose prompts also occur in train is redrawn (no leakage), and
every ground-truth image is re-read by the exact checker as a self-test.
The output is byte-for-byte deterministic for given parameters, so DVC's content
hash is a faithful dataset version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from focusdiff.shapes.configs import ShapesDataConfig
from focusdiff.data.schema import SPLITS, PairRecord, PromptRecord, write_records
from focusdiff.io import atomic_directory
from focusdiff.shapes.checker import check_description
from focusdiff.shapes.generate import CATEGORY_ORDER, ShapesSampler
from focusdiff.shapes.render import render
from focusdiff.shapes.world import Scene

_MAX_REDRAWS = 50


def _save_png(root: Path, rel: str, scene: Scene) -> None:
    Image.fromarray(render(scene)).save(root / rel, format="PNG", optimize=False)


def _uses_holdout(scenes: tuple[Scene, ...], holdout: set[tuple[str, str]]) -> bool:
    return any((o.color, o.shape) in holdout for s in scenes for o in s.objects)


def build_shapes_dataset(cfg: ShapesDataConfig, out: str | Path) -> dict[str, Any]:
    """Write a canonical dataset directory at `out` (atomically); return its manifest."""
    holdout = {tuple(h) for h in cfg.holdout}
    pairs: list[PairRecord] = []
    prompts: list[PromptRecord] = []
    seen: set[tuple[str, ...]] = set()
    stats = {"checker_self_test_failures": 0, "test_pairs_with_holdout": 0, "val_pairs_with_holdout": 0}
    with atomic_directory(out) as root:
        (root / "images").mkdir()
        for si, split in enumerate(SPLITS):
            rng = np.random.default_rng([cfg.seed, si])
            sampler = ShapesSampler(cfg.canvas, rng, frozenset(holdout) if split == "train" else frozenset())
            for category in CATEGORY_ORDER:
                for i in range(getattr(cfg.pairs_per_category, split)):
                    for _ in range(_MAX_REDRAWS):
                        p = sampler.pair(category)
                        key = tuple(sorted((p.prompt1, p.prompt2)))
                        if key not in seen:
                            break
                    else:
                        raise RuntimeError(f"could not draw a new {category} pair for {split} in {_MAX_REDRAWS} tries")
                    seen.add(key)
                    pid = f"{split}-{category}-{i:05d}"
                    rels = (f"images/{pid}_1.png", f"images/{pid}_2.png")
                    for rel, scene, d in zip(rels, (p.scene1, p.scene2), (p.description1, p.description2)):
                        _save_png(root, rel, scene)
                        stats["checker_self_test_failures"] += not check_description(render(scene), d).correct
                    if split != "train" and _uses_holdout((p.scene1, p.scene2), holdout):
                        stats[f"{split}_pairs_with_holdout"] += 1
                    pairs.append(
                        PairRecord(
                            id=pid, split=split, category=category,
                            prompt1=p.prompt1, prompt2=p.prompt2, image1=rels[0], image2=rels[1],
                            scene1=p.scene1.to_dict(), scene2=p.scene2.to_dict(),
                        )
                    )
            for i in range(getattr(cfg.prompts, split)):
                for _ in range(_MAX_REDRAWS):
                    u = sampler.unpaired()
                    if (u.prompt,) not in seen:
                        break
                else:
                    raise RuntimeError(f"could not draw a new unpaired prompt for {split}")
                seen.add((u.prompt,))
                qid = f"{split}-prompt-{i:05d}"
                rel = f"images/{qid}.png"
                _save_png(root, rel, u.scene)
                prompts.append(PromptRecord(id=qid, split=split, prompt=u.prompt, image=rel, scene=u.scene.to_dict()))
        source = {"kind": "shapes", "params": cfg.model_dump(mode="json")}
        return write_records(root, pairs, prompts, {"source": source, "build_report": stats})
