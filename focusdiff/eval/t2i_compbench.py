"""T2I-CompBench: attribute binding, spatial and non-spatial relations, complex prompts
(Huang et al.; Karine-Huang/T2I-CompBench).

Protocol (../shared/specs/benchmarks.md): the test split is the `*_val.txt` files, 300
prompts per category, 10 images per prompt (`<category>/samples/<prompt>_<NNNNNN>.png`).
  * color / shape / texture (BLIP-VQA): the prompt's noun chunks (minus 'top', 'the side',
    'the left', 'the right'), at most 8, each asked as "<chunk>?"; per question
    P = p(yes) / (p(yes) + p(no)); image score = product over the questions;
  * spatial: objects = first and last noun, each the first detection of its class at
    confidence >= 0.5 (UniDet's threshold; the same detection for both when both nouns are
    one word); with both detected,
    0.25 * conf1 + 0.25 * conf2 + 0.5 * pos; one detected: 0.25 * conf; none: 0; then 0
    when below 0.5. pos: left/right (top/bottom on y) needs the right sign of dx and
    |dx| > |dy|, and is 1 if IoU < 0.1 else 0.1 / IoU; "next to"/"near"/"on side of":
    1 if |dx| < 150 or |dy| < 150 (pixels at short side 479) else 150 / max(|dx|, |dy|);
  * non_spatial: CLIPScore, the raw cosine of image and prompt embeddings;
  * complex (3-in-1): prompts of complex_val_spatial: (BLIP + spatial) / 2; of
    complex_val_action: (BLIP + CLIP) / 2; otherwise (BLIP + spatial + CLIP) / 3, with spatial
    and CLIP in the official complex mode (the nouns on each side of the preposition; CLIP
    sees the prompt without adjectives).
Category score = mean over images. There is no official overall number.

Scorers are backends (`T2IScorers`): BLIP-VQA, OWLv2 (for UniDet, not in transformers)
and CLIP B/32 with spaCy noun chunks for real images; the exact checker and the
ShapesWorld grammar for ShapesWorld. The formulas here are shared. `BENCHMARK` is
T2I-CompBench for the evaluation path (focusdiff/eval/orchestrate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from focusdiff.errors import DataError
from focusdiff.eval.benchmark import Benchmark, Row, Suite
from focusdiff.eval.configs import OFFICIAL_VQA_IMAGE_SIZE, EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob
from focusdiff.eval.geneval import Detection
from focusdiff.eval.official import official_file
from focusdiff.io import atomic_write_text

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
VQA_CATEGORIES = ("color", "shape", "texture")
IMAGES_PER_PROMPT = 10
MAX_QUESTIONS = 8
EXCLUDED_CHUNKS = frozenset({"top", "the side", "the left", "the right"})
SPATIAL_WORDS = {"on the left of": "left", "on the right of": "right", "on the top of": "top", "on the bottom of": "bottom",
                 "on side of": "near", "next to": "near", "near": "near"}  # the spatial category's phrases
NEAR_PIXELS, REFERENCE_SHORT_SIDE = 150, 479
DETECTION_THRESHOLD = 0.5  # UniDet's confidence_threshold in the official spatial scorer
# the spatial scorer's `--complex True` mode: the objects are the nouns on each side of the first of these
COMPLEX_PREPOSITIONS = {"on top of": "top", "on bottom of": "bottom", "on the left": "left", "on the right": "right",
                        "next to": "near", "on side of": "near", "near": "near"}


class NounParser(Protocol):
    def chunks(self, prompt: str) -> list[str]: ...

    def nouns(self, prompt: str) -> list[str]: ...

    def objects_around(self, prompt: str, start: int, end: int) -> list[str]:
        """Complex mode: the nearest noun (or proper noun) ending before character `start` and
        the first noun from `end` on, those found (0, 1 or 2)."""
        ...

    def without_adjectives(self, prompt: str) -> str:
        """Complex mode: the prompt with its adjectives removed (what CLIP is shown)."""
        ...


class VQA(Protocol):
    name: str

    def yes_probability(self, image: np.ndarray, question: str) -> float: ...


class ObjectDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray, names: list[str]) -> list[Detection]: ...


class Similarity(Protocol):
    name: str

    def similarity(self, image: np.ndarray, text: str) -> float: ...


@dataclass
class T2IScorers:
    parser: NounParser
    vqa: VQA
    detector: ObjectDetector
    similarity: Similarity


@dataclass(frozen=True)
class T2IPrompt:
    category: str
    index: int
    prompt: str


def load_prompts(path: str | Path, category: str) -> list[T2IPrompt]:
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"T2I-CompBench {category} prompt file not found", file=path) from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise DataError("no prompts", file=path)
    return [T2IPrompt(category, i, p) for i, p in enumerate(prompts)]


def image_file(p: T2IPrompt, k: int, per_prompt: int = IMAGES_PER_PROMPT) -> str:
    """The official layout: `<category>/samples/<prompt>_<running index, 6 digits>.png`."""
    return f"{p.category}/samples/{p.prompt.replace('/', ' ')}_{p.index * per_prompt + k:06d}.png"


def jobs(prompts: list[T2IPrompt], per_prompt: int = IMAGES_PER_PROMPT) -> list[ImageJob]:
    return [ImageJob(image_file(p, k, per_prompt), p.prompt) for p in prompts for k in range(per_prompt)]


# --------------------------------------------------------------------------- scores


def questions(prompt: str, parser: NounParser) -> list[str]:
    return [f"{c}?" for c in parser.chunks(prompt) if c not in EXCLUDED_CHUNKS][:MAX_QUESTIONS]


def blip_vqa_score(image: np.ndarray, prompt: str, s: T2IScorers) -> float:
    asked = questions(prompt, s.parser)
    if not asked:
        raise ValueError(f"no noun chunks to ask about in {prompt!r}")
    # the official rounds each answer's probability and their product to 4 decimals
    return round(float(np.prod([round(s.vqa.yes_probability(image, q), 4) for q in asked])), 4)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def first_phrase(prompt: str, phrases: dict[str, str]) -> tuple[str, int, int] | None:
    """The relation of the phrase (of `phrases`: phrase -> relation) that comes first in the
    prompt, and that phrase's character span; None when the prompt has none."""
    text = prompt.lower()
    found = [(text.find(phrase), phrase) for phrase in phrases if phrase in text]
    if not found:
        return None
    start, phrase = min(found)
    return phrases[phrase], start, start + len(phrase)


def relation_of(prompt: str) -> str | None:
    found = first_phrase(prompt, SPATIAL_WORDS)
    return found[0] if found else None


def position_score(relation: str, a: Detection, b: Detection, short_side: int) -> float:
    ca = ((a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2)
    cb = ((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2)
    dx, dy = ca[0] - cb[0], ca[1] - cb[1]
    if relation == "near":
        near = NEAR_PIXELS * short_side / REFERENCE_SHORT_SIDE
        return 1.0 if abs(dx) < near or abs(dy) < near else near / max(abs(dx), abs(dy))
    along, across = (dx, dy) if relation in ("left", "right") else (dy, dx)
    sign_ok = along < 0 if relation in ("left", "top") else along > 0
    if not (sign_ok and abs(along) > abs(across)):
        return 0.0
    iou = _iou(a.box, b.box)
    return 1.0 if iou < 0.1 else 0.1 / iou


def spatial_score(image: np.ndarray, prompt: str, s: T2IScorers, complex_mode: bool = False) -> float:
    """The spatial category's score; `complex_mode` is the official `--complex True` run used for
    the complex category: the objects are the nouns on each side of the preposition, and the
    score is 0 unless exactly two come out."""
    if complex_mode:
        around = first_phrase(prompt, COMPLEX_PREPOSITIONS)
        if around is None:
            return 0.0
        relation, start, end = around
        objects = s.parser.objects_around(prompt, start, end)
        if len(objects) != 2:
            return 0.0
        first, last = objects
    else:
        nouns = s.parser.nouns(prompt)
        if not nouns:
            raise ValueError(f"no nouns to detect in {prompt!r}")
        relation = relation_of(prompt)
        if relation is None:
            return 0.0  # as the official script: no relation phrase, no position credit, below 0.5
        first, last = nouns[0], nouns[-1]
    found: dict[str, Detection] = {}
    for d in s.detector.detect(image, [first, last]):
        # as UniDet's: below its confidence threshold an object is not found; each noun is
        # the first detection of its class in the detector's output, not the best one
        if d.score >= DETECTION_THRESHOLD and d.cls not in found:
            found[d.cls] = d
    a, b = found.get(first), found.get(last)  # the same detection twice when both nouns are one word
    if a is not None and b is not None:
        score = 0.25 * a.score + 0.25 * b.score + 0.5 * position_score(relation, a, b, min(image.shape[:2]))
    elif a is not None or b is not None:
        score = 0.25 * (a or b).score
    else:
        score = 0.0
    return score if score >= 0.5 else 0.0


def complex_score(image: np.ndarray, prompt: str, s: T2IScorers, spatial_prompts: set[str], action_prompts: set[str]) -> float:
    """3-in-1, with the spatial and CLIP scorers in their official complex mode (CLIP is shown
    the prompt without its adjectives)."""
    blip = blip_vqa_score(image, prompt, s)
    if prompt in spatial_prompts:
        return (blip + spatial_score(image, prompt, s, complex_mode=True)) / 2
    clip = s.similarity.similarity(image, s.parser.without_adjectives(prompt))
    if prompt in action_prompts:
        return (blip + clip) / 2
    return (blip + spatial_score(image, prompt, s, complex_mode=True) + clip) / 3


def score_image(p: T2IPrompt, image: np.ndarray, s: T2IScorers, spatial_prompts: set[str], action_prompts: set[str]) -> float:
    if p.category in VQA_CATEGORIES:
        return blip_vqa_score(image, p.prompt, s)
    if p.category == "spatial":
        return spatial_score(image, p.prompt, s)
    if p.category == "non_spatial":
        return s.similarity.similarity(image, p.prompt)
    if p.category == "complex":
        return complex_score(image, p.prompt, s, spatial_prompts, action_prompts)
    raise ValueError(f"unknown T2I-CompBench category {p.category!r}")


def aggregate(prompts: list[T2IPrompt], scores: dict[str, float], per_prompt: int = IMAGES_PER_PROMPT) -> dict[str, float]:
    """t2i_compbench.<category> = mean over the category's images; `mean_of_categories` is ours."""
    missing = [j.file for j in jobs(prompts, per_prompt) if j.file not in scores]
    if missing:
        raise IncompleteEvaluation("t2i_compbench", f"{len(missing)} images have no score (first: {', '.join(missing[:3])})")
    per: dict[str, list[float]] = {}
    for p in prompts:
        per.setdefault(p.category, []).extend(scores[image_file(p, k, per_prompt)] for k in range(per_prompt))
    metrics = {f"t2i_compbench.{c}": float(np.mean(per[c])) for c in CATEGORIES if c in per}
    metrics["t2i_compbench.mean_of_categories"] = float(np.mean([metrics[f"t2i_compbench.{c}"] for c in CATEGORIES if c in per]))
    return metrics


# --------------------------------------------------------------------------- ShapesWorld


def shapes_suite(seed: int = 0, per_category: int = 10) -> dict[str, list[str]]:
    """T2I-CompBench's categories in ShapesWorld's grammar (category -> prompts), plus the
    complex split lists. shape binds sizes and texture binds the background: ShapesWorld has
    three shapes and no textures (named deviations)."""
    from focusdiff.shapes.world import BACKGROUNDS, COLORS, SHAPES, SIZES

    rng = np.random.default_rng(seed)
    colors = list(COLORS)

    def pick(rows: list[str], n: int = per_category) -> list[str]:
        return [rows[i] for i in sorted(rng.permutation(len(rows))[:n])]

    def art(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    suite = {
        "color": pick([f"{art(ca)} {ca} {a} and {art(cb)} {cb} {b}" for a, b in pairs for ca in colors for cb in colors if ca != cb]),
        "shape": pick([f"{art(sa)} {sa} {a} and {art(sb)} {sb} {b}" for a, b in pairs for sa in SIZES for sb in SIZES]),
        "texture": pick([f"{art(c)} {c} {a} on {art(bg)} {bg} background" for a in SHAPES for c in colors
                         for bg in BACKGROUNDS if bg != c]),
        "spatial": pick([f"{art(a)} {a} {w} {art(b)} {b}" for a, b in pairs
                         for w in ("on the left of", "on the right of")]),
        "non_spatial": pick([f"{art(c)} {c} {a}" for a in SHAPES for c in colors]),
    }
    # complex: relation only (BLIP + spatial), attributes and background (BLIP + CLIP), all three
    third = max(1, per_category // 3)
    spatial = pick([f"{art(ca)} {ca} {a} on the left of {art(cb)} {cb} {b}" for a, b in pairs for ca in colors for cb in colors
                    if ca != cb], third)
    plain = pick([f"{art(ca)} {ca} {a} and {art(cb)} {cb} {b} on {art(bg)} {bg} background" for a, b in pairs
                  for ca in colors[:4] for cb in colors[4:8] for bg in BACKGROUNDS], third)
    both = pick([f"{art(ca)} {ca} {a} on the right of {art(cb)} {cb} {b} on {art(bg)} {bg} background" for a, b in pairs
                 for ca in colors[:4] for cb in colors[4:8] for bg in BACKGROUNDS], per_category - 2 * third)
    suite["complex"] = spatial + plain + both
    suite["complex_val_spatial"] = spatial
    suite["complex_val_action"] = plain
    return suite


class ShapesParser:
    """Noun chunks and nouns from the ShapesWorld grammar (spaCy's role for real prompts)."""

    def _description(self, prompt: str):
        from focusdiff.shapes.grammar import parse_caption

        return parse_caption(prompt)

    def chunks(self, prompt: str) -> list[str]:
        from focusdiff.shapes.grammar import _article, group_phrase

        d = self._description(prompt)
        out = [group_phrase(g, d.numeral) for g in d.groups]
        if d.background:
            out.append(f"{_article(d.background)} {d.background} background")
        return out

    def nouns(self, prompt: str) -> list[str]:
        return [g.shape for g in self._description(prompt).groups]

    def objects_around(self, prompt: str, start: int, end: int) -> list[str]:
        # the grammar puts a relation between exactly two groups
        d = self._description(prompt)
        return [g.shape for g in d.groups] if d.relation else []

    def without_adjectives(self, prompt: str) -> str:
        from dataclasses import replace

        from focusdiff.shapes.grammar import caption

        d = self._description(prompt)
        return caption(replace(d, groups=tuple(replace(g, color=None, size=None) for g in d.groups), background=None))


class ShapesVQA:
    """"<chunk>?" answered by the exact checker: 1 if the image holds the chunk, else 0."""

    name = "shapes-checker"

    def yes_probability(self, image: np.ndarray, question: str) -> float:
        from focusdiff.shapes.checker import parse_image
        from focusdiff.shapes.grammar import _parse_group

        chunk = question.removesuffix("?").strip()
        scene = parse_image(image)
        if chunk.endswith(" background"):
            return float(scene.background == chunk.split()[-2])
        group, _ = _parse_group(chunk, question)
        return float(sum(group.matches(o) for o in scene.objects) >= group.count)


class ShapesSimilarity:
    """The share of the prompt's clauses the exact checker finds true (CLIPScore's role)."""

    name = "shapes-checker"

    def similarity(self, image: np.ndarray, text: str) -> float:
        from focusdiff.shapes.checker import check

        return check(image, text).fraction


def shapes_scorers() -> T2IScorers:
    from focusdiff.eval.geneval import ShapesDetector

    return T2IScorers(ShapesParser(), ShapesVQA(), ShapesDetector(), ShapesSimilarity())


def suite_files(suite: dict[str, list[str]]) -> dict[str, str]:
    """The suite as T2I-CompBench's files: `<category>_val.txt` and the complex lists."""
    out = {f"{c}_val.txt": "\n".join(suite[c]) + "\n" for c in CATEGORIES}
    out["complex_val_spatial.txt"] = "\n".join(suite["complex_val_spatial"]) + ("\n" if suite["complex_val_spatial"] else "")
    out["complex_val_action.txt"] = "\n".join(suite["complex_val_action"]) + ("\n" if suite["complex_val_action"] else "")
    return out


def read_lists(folder: Path) -> tuple[set[str], set[str]]:
    def read(name: str) -> set[str]:
        path = folder / name
        return {line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()} if path.is_file() else set()

    return read("complex_val_spatial.txt"), read("complex_val_action.txt")


def describe(scorers: T2IScorers) -> dict[str, Any]:
    return {"vqa": scorers.vqa.name, "detector": scorers.detector.name, "similarity": scorers.similarity.name}


# --------------------------------------------------------------------------- the benchmark


@dataclass
class T2ISuite(Suite):
    prompts: list[T2IPrompt]
    scorers: T2IScorers
    spatial_prompts: set[str]  # complex prompts scored BLIP + spatial
    action_prompts: set[str]  # complex prompts scored BLIP + CLIP
    images_per_prompt: int = IMAGES_PER_PROMPT


class T2ICompBench(Benchmark[T2ISuite]):
    name = "t2i_compbench"

    def prepare(self, cfg: EvalConfig, folder: Path) -> T2ISuite:
        c = cfg.t2i_compbench
        deviations = []
        if c.suite == "shapes":
            lists = folder / "dataset"
            for name, text in suite_files(shapes_suite(cfg.seed, c.prompts_per_category)).items():
                atomic_write_text(lists / name, text)
            deviations.append(f"suite: ShapesWorld prompts in T2I-CompBench's files ({c.prompts_per_category} per "
                              "category), not the official 300; shape binds sizes and texture binds the background")
        else:
            for name in [f"{x}_val.txt" for x in c.categories] + ["complex_val_spatial.txt", "complex_val_action.txt"]:
                official_file("t2i_compbench", f"dataset/{name}", cfg.benchmark_dir)
            lists = official_file("t2i_compbench", "dataset/color_val.txt", cfg.benchmark_dir).parent
        prompts = [p for cat in c.categories for p in load_prompts(lists / f"{cat}_val.txt", cat)]
        spatial_prompts, action_prompts = read_lists(lists)
        if c.scorers == "shapes":
            scorers = shapes_scorers()
            deviations.append("scorers: the exact checker (VQA, detection, clause share for CLIPScore) and the ShapesWorld "
                              "grammar for noun chunks, not BLIP-VQA / UniDet / CLIP / spaCy")
        else:
            from focusdiff.eval.t2i_models import transformers_scorers

            scorers = transformers_scorers(c)
            deviations.append(f"spatial detector: {c.detector_model} (open-vocabulary) instead of UniDet; UniDet's "
                              f"confidence threshold {DETECTION_THRESHOLD} is applied to its scores, which are "
                              "calibrated differently")
            if c.vqa_image_size != OFFICIAL_VQA_IMAGE_SIZE:
                deviations.append(f"BLIP-VQA sees images at {c.vqa_image_size} px, "
                                  f"not the official {OFFICIAL_VQA_IMAGE_SIZE} px")
        if c.images_per_prompt != IMAGES_PER_PROMPT:
            deviations.append(f"{c.images_per_prompt} images per prompt, not the official {IMAGES_PER_PROMPT}")
        return T2ISuite(jobs(prompts, c.images_per_prompt), deviations, prompts, scorers, spatial_prompts, action_prompts,
                        c.images_per_prompt)

    def score(self, suite: T2ISuite, images: Path) -> list[Row]:
        rows = []
        for p in suite.prompts:
            for k in range(suite.images_per_prompt):
                file = image_file(p, k, suite.images_per_prompt)
                image = np.asarray(Image.open(images / file).convert("RGB"))
                score = score_image(p, image, suite.scorers, suite.spatial_prompts, suite.action_prompts)
                rows.append({"file": file, "category": p.category, "prompt": p.prompt, "score": score})
        return rows

    def aggregate(self, suite: T2ISuite, rows: list[Row]) -> dict[str, float]:
        return aggregate(suite.prompts, {r["file"]: r["score"] for r in rows}, suite.images_per_prompt)

    def resampling_units(self, suite: T2ISuite, rows: list[Row]) -> dict[str, np.ndarray]:
        """Prompts (the mean of their images), stratified by category."""
        scores = {r["file"]: r["score"] for r in rows}
        per: dict[str, list[float]] = {}
        for p in suite.prompts:
            n = suite.images_per_prompt
            per.setdefault(p.category, []).append(float(np.mean([scores[image_file(p, k, n)] for k in range(n)])))
        return {c: np.array(v) for c, v in per.items()}

    def statistic(self, sample: dict[str, np.ndarray]) -> dict[str, float]:
        # per category only: there is no official overall number to put an interval on
        return {f"t2i_compbench.{c}": float(np.mean(units)) for c, units in sample.items()}


BENCHMARK = T2ICompBench()
