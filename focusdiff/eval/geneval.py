"""GenEval: object-focused compositional checks from detections (Ghosh et al.; djghosh13/geneval).

Protocol (../shared/specs/benchmarks.md): 553 prompts in `evaluation_metadata.jsonl`, each
with a `tag` (task) and `include` clauses {class, count, color?, position?} plus optional
`exclude` clauses; 4 images per prompt in `<out>/<NNNNN>/samples/<iiii>.png` beside the
prompt's `metadata.jsonl`. Per image: detections above 0.3 (counting: 0.9), at most 16
per class, highest score first; a clause passes when enough detections of its class
exist, the first `count` of them have the colour (colour classifier) and hold the
relation to every object of the target group (box-based rule below). An image is right
when every include passes and no exclude fires. Task score = mean over its images;
overall = unweighted mean of the tasks.

Detection and colour are backends: Mask2Former + CLIP ViT-L/14 (transformers) for real
images, the exact checker for ShapesWorld. The clause logic here is shared by both.
`BENCHMARK` is GenEval for the evaluation path (focusdiff/eval/orchestrate.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from focusdiff.errors import DataError
from focusdiff.eval.benchmark import Benchmark, Row, Suite
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob
from focusdiff.eval.official import official_file
from focusdiff.io import atomic_write_text, jsonl_text

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
IMAGES_PER_PROMPT = 4
THRESHOLD, COUNTING_THRESHOLD, MAX_OBJECTS = 0.3, 0.9, 16
POSITION_THRESHOLD = 0.1
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class GenEvalPrompt:
    index: int
    tag: str
    prompt: str
    include: tuple[dict[str, Any], ...]
    exclude: tuple[dict[str, Any], ...] = ()

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tag": self.tag, "include": list(self.include)}
        if self.exclude:
            out["exclude"] = list(self.exclude)
        out["prompt"] = self.prompt
        return out


@dataclass
class Detection:
    cls: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    mask: np.ndarray | None = None  # (H, W) bool
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. a colour a backend already knows


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray, classes: list[str]) -> list[Detection]:
        """Every detection of the given classes (any score; thresholds are applied here)."""


class ColorClassifier(Protocol):
    name: str

    def colors(self, image: np.ndarray, detections: list[Detection], cls: str) -> list[str]:
        """One colour name per detection."""


def load_metadata(path: str | Path) -> list[GenEvalPrompt]:
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("GenEval metadata file not found", file=path) from None
    prompts = []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", file=path, row=row) from None
        for key in ("tag", "prompt", "include"):
            if key not in raw:
                raise DataError("missing", file=path, row=row, field=key)
        if raw["tag"] not in TASKS:
            raise DataError(f"unknown tag {raw['tag']!r}; expected one of {', '.join(TASKS)}", file=path, row=row, field="tag")
        for kind in ("include", "exclude"):
            for k, clause in enumerate(raw.get(kind, [])):
                if not isinstance(clause.get("class"), str) or not isinstance(clause.get("count"), int):
                    raise DataError("needs a class (string) and a count (integer)", file=path, row=row, field=f"{kind}[{k}]")
                if "position" in clause and (clause["position"][0] not in RELATIONS or clause["position"][1] >= k):
                    raise DataError(f"position must be [relation, index of an earlier clause], got {clause['position']}",
                                    file=path, row=row, field=f"{kind}[{k}].position")
        prompts.append(GenEvalPrompt(len(prompts), raw["tag"], raw["prompt"], tuple(raw["include"]),
                                     tuple(raw.get("exclude", ()))))
    return prompts


def image_file(prompt: int, image: int) -> str:
    return f"{prompt:05d}/samples/{image:04d}.png"


def jobs(prompts: list[GenEvalPrompt]) -> list[ImageJob]:
    return [ImageJob(image_file(p.index, i), p.prompt) for p in prompts for i in range(IMAGES_PER_PROMPT)]


# --------------------------------------------------------------------------- the clause logic


def keep(detections: list[Detection], tag: str) -> dict[str, list[Detection]]:
    """Per class: above the threshold (0.9 for counting prompts), highest first, at most 16.

    Ranked as GenEval ranks them, `np.argsort(scores)[::-1]`: among equal scores the last
    listed comes first, which decides what a color or position clause checks."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    listed: dict[str, list[Detection]] = {}
    for d in detections:
        listed.setdefault(d.cls, []).append(d)
    by_class: dict[str, list[Detection]] = {}
    for cls, found in listed.items():
        ranked = [found[i] for i in np.argsort([d.score for d in found])[::-1]]
        kept = [d for d in ranked if d.score > threshold][:MAX_OBJECTS]
        if kept:
            by_class[cls] = kept
    return by_class


def relative_position(a: Detection, b: Detection) -> set[str]:
    """Where `a` is relative to `b`, allowing for the objects' sizes (GenEval's rule)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def evaluate_image(image: np.ndarray, prompt: GenEvalPrompt, detections: list[Detection],
                   colors: ColorClassifier) -> tuple[bool, str]:
    """(correct, reasons) for one image, exactly as GenEval's evaluate()."""
    objects = keep(detections, prompt.tag)
    correct, reasons, matched_groups = True, [], []
    for req in prompt.include:
        cls, count = req["class"], req["count"]
        matched = True
        found = objects.get(cls, [])[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                seen = colors.colors(image, found, cls)
                if seen.count(req["color"]) < count:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found "
                                   f"{seen.count(req['color'])} {req['color']}; and " + ", ".join(f"{c} {cls}" for c in seen))
            if "position" in req and matched:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    for obj in found:
                        for other in matched_groups[target]:
                            true_relations = relative_position(obj, other)
                            if relation not in true_relations:
                                correct = matched = False
                                reasons.append(f"expected {cls} {relation} target, found "
                                               f"{' and '.join(sorted(true_relations)) or 'no relation'} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in prompt.exclude:
        if len(objects.get(req["class"], [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {len(objects[req['class']])}")
    return correct, "\n".join(reasons)


def aggregate(prompts: list[GenEvalPrompt], correct: dict[str, bool]) -> dict[str, float]:
    """geneval.<task> = mean correctness over the task's images; geneval.overall = mean of tasks."""
    missing = [j.file for j in jobs(prompts) if j.file not in correct]
    if missing:
        raise IncompleteEvaluation("geneval", f"{len(missing)} images have no result (first: {', '.join(missing[:5])})")
    per_task: dict[str, list[bool]] = {}
    for p in prompts:
        for i in range(IMAGES_PER_PROMPT):
            per_task.setdefault(p.tag, []).append(correct[image_file(p.index, i)])
    metrics = {f"geneval.{t}": float(np.mean(per_task[t])) for t in TASKS if t in per_task}
    metrics["geneval.overall"] = float(np.mean([metrics[f"geneval.{t}"] for t in TASKS if t in per_task]))
    return metrics


# --------------------------------------------------------------------------- ShapesWorld


def shapes_suite(seed: int = 0, per_task: int = 12) -> list[dict[str, Any]]:
    """GenEval's six tasks over ShapesWorld's vocabulary, in GenEval's metadata schema."""
    from focusdiff.shapes.grammar import NUMBERS, RELATION_PHRASES
    from focusdiff.shapes.world import COLORS, SHAPES

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []

    def art(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    def pick(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        idx = rng.permutation(len(candidates))[:per_task]
        return [candidates[i] for i in sorted(idx)]

    rows += pick([{"tag": "single_object", "include": [{"class": s, "count": 1}], "prompt": f"a photo of {art(s)} {s}"}
                  for s in SHAPES])
    rows += pick([{"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                   "prompt": f"a photo of {art(a)} {a} and {art(b)} {b}"} for a in SHAPES for b in SHAPES if a != b])
    rows += pick([{"tag": "counting", "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}],
                   "prompt": f"a photo of {NUMBERS[n]} {s}s"} for s in SHAPES for n in (2, 3, 4)])
    rows += pick([{"tag": "colors", "include": [{"class": s, "count": 1, "color": c}], "prompt": f"a photo of {art(c)} {c} {s}"}
                  for s in SHAPES for c in COLORS])
    phrase = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
    rows += pick([{"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [phrase[r], 0]}],
                   "prompt": f"a photo of {art(a)} {a} {RELATION_PHRASES[r][0]} {art(b)} {b}"}
                  for a in SHAPES for b in SHAPES if a != b for r in RELATION_PHRASES])
    rows += pick([{"tag": "color_attr", "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                   "prompt": f"a photo of {art(ca)} {ca} {a} and {art(cb)} {cb} {b}"}
                  for a in SHAPES for b in SHAPES if a != b for ca in COLORS for cb in COLORS if ca != cb])
    return rows


class ShapesDetector:
    """The exact checker's parse of a ShapesWorld image as detections (score 1, colour known)."""

    name = "shapes-checker"

    def detect(self, image: np.ndarray, classes: list[str]) -> list[Detection]:
        from focusdiff.shapes.checker import parse_image
        from focusdiff.shapes.world import Geometry

        scene = parse_image(image)
        geo = Geometry(scene.canvas)
        out = []
        for o in scene.objects:
            if o.shape not in classes:
                continue
            half = geo.size_px(o.size) / 2
            out.append(Detection(o.shape, 1.0, (o.x + 0.5 - half, o.y + 0.5 - half, o.x + 0.5 + half, o.y + 0.5 + half),
                                 attributes={"color": o.color}))
        return out


class KnownColors:
    """Colour from the detector's own reading (the exact checker's nearest palette colour)."""

    name = "shapes-checker"

    def colors(self, image: np.ndarray, detections: list[Detection], cls: str) -> list[str]:
        return [d.attributes["color"] for d in detections]


# --------------------------------------------------------------------------- the benchmark


@dataclass
class GenEvalSuite(Suite):
    prompts: list[GenEvalPrompt]
    detector: Detector
    colors: ColorClassifier


class GenEval(Benchmark[GenEvalSuite]):
    name = "geneval"
    rows_file = "results.jsonl"  # GenEval's own name for its per-image results

    def prepare(self, cfg: EvalConfig, folder: Path) -> GenEvalSuite:
        c = cfg.geneval
        deviations = []
        if c.suite == "shapes":
            meta_file = folder / "evaluation_metadata.jsonl"
            atomic_write_text(meta_file, jsonl_text(shapes_suite(cfg.seed, c.prompts_per_task)))
            deviations.append(f"suite: ShapesWorld prompts in GenEval's schema ({c.prompts_per_task} per task), "
                              "not the official 553")
            class_names = None
        else:
            meta_file = official_file("geneval", "evaluation_metadata.jsonl", cfg.benchmark_dir)
            names = official_file("geneval", "object_names.txt", cfg.benchmark_dir)
            class_names = [line.strip() for line in names.read_text("utf-8").splitlines() if line.strip()]
        prompts = load_metadata(meta_file)
        if c.detector == "shapes":
            detector, colors = ShapesDetector(), KnownColors()
            deviations.append("detector and colours: the exact checker's parse of ShapesWorld pixels, not Mask2Former + CLIP")
        else:
            from focusdiff.eval.detectors import ClipColorClassifier, Mask2FormerDetector

            if class_names is None:
                from focusdiff.shapes.world import SHAPES

                class_names = list(SHAPES)
            detector, colors = Mask2FormerDetector(c.detector_model, class_names), ClipColorClassifier(c.color_model)
            deviations.append("detector: transformers' Mask2Former (trained differently from the official mmdet checkpoint)")
        return GenEvalSuite(jobs(prompts), deviations, prompts, detector, colors)

    def lay_out(self, suite: GenEvalSuite, images: Path) -> None:
        for p in suite.prompts:  # GenEval's layout: each prompt folder holds its metadata
            atomic_write_text(images / f"{p.index:05d}" / "metadata.jsonl", json.dumps(p.metadata()) + "\n")

    def score(self, suite: GenEvalSuite, images: Path) -> list[Row]:
        by_index = {p.index: p for p in suite.prompts}
        rows = []
        for j in suite.jobs:
            p = by_index[int(j.file[:5])]
            image = np.asarray(Image.open(images / j.file).convert("RGB"))
            classes = sorted({r["class"] for r in (*p.include, *p.exclude)})
            ok, reason = evaluate_image(image, p, suite.detector.detect(image, classes), suite.colors)
            rows.append({"file": j.file, "tag": p.tag, "prompt": p.prompt, "correct": ok, "reason": reason})
        return rows

    def aggregate(self, suite: GenEvalSuite, rows: list[Row]) -> dict[str, float]:
        return aggregate(suite.prompts, {r["file"]: r["correct"] for r in rows})

    def resampling_units(self, suite: GenEvalSuite, rows: list[Row]) -> dict[str, np.ndarray]:
        """Prompts (the share of their 4 images right), stratified by task."""
        correct = {r["file"]: r["correct"] for r in rows}
        per_task: dict[str, list[float]] = {}
        for p in suite.prompts:
            per_task.setdefault(p.tag, []).append(
                float(np.mean([correct[image_file(p.index, i)] for i in range(IMAGES_PER_PROMPT)])))
        return {t: np.array(v) for t, v in per_task.items()}

    def statistic(self, sample: dict[str, np.ndarray]) -> dict[str, float]:
        tasks = {f"geneval.{t}": float(np.mean(units)) for t, units in sample.items()}
        return tasks | {"geneval.overall": float(np.mean(list(tasks.values())))}


BENCHMARK = GenEval()
