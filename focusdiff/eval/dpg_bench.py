"""DPG-Bench: dense prompts checked by a graph of yes/no questions (Hu et al., ELLA).

Protocol (../shared/specs/benchmarks.md; TencentQQGYLab/ELLA dpg_bench/compute_dpg_bench.py):
the question file `dpg_bench.csv` has one row per question (item_id, text, keywords,
proposition_id, dependency, category_broad, category_detailed, tuple,
question_natural_language). 4 images per prompt, saved as one 2x2 grid `<item_id>.png`.
Per image tile and question, a = 1 when the VQA answers yes. Dependency rule, in file
order: a' = 0 if any parent's (possibly already zeroed) value is 0. Tile score = mean a';
image score = mean over its tiles; DPG = 100 x mean over images. Category scores
(L2 = the tuple's text before "(", L1 = L2's text before " - ") = 100 x mean of the raw
answers pooled by category.

Fixed defects of the official script: it skips the first CSV row; it pools only the last
tile's answers into the category scores; it counts only an exact 'yes' (a judge answering
'Yes' scores 0). Here every row is used, every tile's answers are pooled, and a judge's
answer is yes when P(yes)/(P(yes)+P(no)) > 0.5. `BENCHMARK` is DPG-Bench for the evaluation
path (focusdiff/eval/orchestrate.py).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from focusdiff.errors import ConfigError, DataError
from focusdiff.eval.benchmark import Benchmark, Row, Suite
from focusdiff.eval.configs import EvalConfig
from focusdiff.eval.errors import IncompleteEvaluation
from focusdiff.eval.generation import ImageJob, png_bytes
from focusdiff.eval.official import file_sha256, official_file
from focusdiff.io import atomic_write_bytes, atomic_write_text
from focusdiff.judge.select import build_judge

COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed", "tuple",
           "question_natural_language")
TILES = 4


@dataclass(frozen=True)
class DPGQuestion:
    proposition_id: int
    dependency: tuple[int, ...]  # parent proposition ids (0: none)
    tuple: str  # e.g. "entity - whole (bicycle)"
    question: str

    @property
    def l2(self) -> str:
        return self.tuple.split("(")[0].strip()

    @property
    def l1(self) -> str:
        return self.l2.split("-")[0].strip()


@dataclass(frozen=True)
class DPGItem:
    item_id: str
    prompt: str
    questions: tuple[DPGQuestion, ...]


class Answerer(Protocol):
    name: str

    def answers(self, image: np.ndarray, item: DPGItem) -> list[bool]:
        """One yes/no per question of `item`, in order."""


def load_questions(path: str | Path) -> list[DPGItem]:
    """Every row of the question CSV (the official script drops the first), grouped by item."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise DataError("DPG-Bench question file not found", file=path) from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"missing columns {missing}; expected {list(COLUMNS)}", file=path, row=1)
    items: dict[str, tuple[str, list[DPGQuestion]]] = {}
    for row_number, row in enumerate(reader, start=2):  # line 1 is the header
        for field in ("item_id", "text", "tuple", "question_natural_language", "proposition_id", "dependency"):
            if not (row.get(field) or "").strip():
                raise DataError("empty", file=path, row=row_number, field=field)
        try:
            qid = int(row["proposition_id"])
            parents = tuple(int(d.strip()) for d in row["dependency"].split(","))
        except ValueError as exc:
            raise DataError(f"not an integer list: {exc}", file=path, row=row_number, field="dependency/proposition_id") from None
        prompt, questions = items.setdefault(row["item_id"].strip(), (row["text"].strip(), []))
        if any(q.proposition_id == qid for q in questions):
            raise DataError(f"proposition {qid} of item {row['item_id']} appears twice", file=path, row=row_number,
                            field="proposition_id")
        known = {q.proposition_id for q in questions}
        unknown = [p for p in parents if p != 0 and p not in known]
        if unknown:
            raise DataError(f"depends on propositions {unknown} not defined earlier for item {row['item_id']}",
                            file=path, row=row_number, field="dependency")
        questions.append(DPGQuestion(qid, parents, row["tuple"].strip(), row["question_natural_language"].strip()))
    if not items:
        raise DataError("no questions", file=path)
    return [DPGItem(item_id, prompt, tuple(qs)) for item_id, (prompt, qs) in items.items()]


def tile_file(item: DPGItem, k: int) -> str:
    return f"tiles/{item.item_id}_{k}.png"


def jobs(items: list[DPGItem]) -> list[ImageJob]:
    return [ImageJob(tile_file(item, k), item.prompt) for item in items for k in range(TILES)]


def grid(tiles: list[Image.Image]) -> Image.Image:
    """The official layout: 4 tiles in a 2x2 grid (row-major)."""
    w, h = tiles[0].size
    out = Image.new("RGB", (2 * w, 2 * h))
    for k, tile in enumerate(tiles):
        out.paste(tile, ((k % 2) * w, (k // 2) * h))
    return out


def apply_dependencies(item: DPGItem, raw: list[bool]) -> list[float]:
    """a' per question, in file order: zero when any parent's (possibly zeroed) value is 0."""
    values = {q.proposition_id: float(a) for q, a in zip(item.questions, raw)}
    for q in item.questions:
        if any(p != 0 and values[p] == 0 for p in q.dependency):
            values[q.proposition_id] = 0.0
    return [values[q.proposition_id] for q in item.questions]


def aggregate(items: list[DPGItem], answers: dict[str, list[list[bool]]]) -> dict[str, float]:
    """`answers[item_id]` holds each tile's raw answers. dpg.overall and pooled category scores."""
    missing = [i.item_id for i in items if len(answers.get(i.item_id, [])) != TILES]
    if missing:
        raise IncompleteEvaluation("dpg_bench", f"{len(missing)} prompts lack answers for all {TILES} tiles "
                                                f"(first: {', '.join(missing[:3])})")
    image_scores, l1, l2 = [], {}, {}
    for item in items:
        tiles = answers[item.item_id]
        image_scores.append(np.mean([np.mean(apply_dependencies(item, raw)) for raw in tiles]))
        for raw in tiles:  # every tile's raw answers (the official script keeps only the last tile's)
            for q, a in zip(item.questions, raw):
                l2.setdefault(q.l2, []).append(float(a))
                l1.setdefault(q.l1, []).append(float(a))
    metrics = {"dpg.overall": 100 * float(np.mean(image_scores))}
    metrics |= {f"dpg.l1.{slug(k)}": 100 * float(np.mean(v)) for k, v in sorted(l1.items())}
    metrics |= {f"dpg.l2.{slug(k)}": 100 * float(np.mean(v)) for k, v in sorted(l2.items())}
    return metrics


def slug(category: str) -> str:
    return "_".join(category.replace("-", " ").split()).lower()


# --------------------------------------------------------------------------- answerers


class JudgeAnswerer:
    """A yes/no VLM judge asked each question verbatim; yes when P(yes) > P(no)."""

    def __init__(self, judge):
        self.judge = judge
        self.name = f"judge:{judge.name}"

    def answers(self, image: np.ndarray, item: DPGItem) -> list[bool]:
        verdicts = self.judge.judge([image] * len(item.questions), [q.question for q in item.questions])
        return [v.score > 0.5 for v in verdicts]


# ShapesWorld tuples: "<category> (<arguments>)", answered from the exact checker's parse.
def _args(t: str) -> list[str]:
    return [a.strip() for a in t[t.index("(") + 1 : t.rindex(")")].split(",")]


class ShapesAnswerer:
    name = "shapes-checker"

    def answers(self, image: np.ndarray, item: DPGItem) -> list[bool]:
        from focusdiff.shapes.checker import parse_image
        from focusdiff.shapes.grammar import holds

        scene = parse_image(image)
        out = []
        for q in item.questions:
            args = _args(q.tuple)
            objs = [o for o in scene.objects if o.shape == args[0]] if args and args[0] in ("circle", "square", "triangle") else []
            if q.l2 == "entity - whole":
                out.append(bool(objs))
            elif q.l2 == "attribute - color":
                out.append(any(o.color == args[1] for o in objs))
            elif q.l2 == "attribute - size":
                out.append(any(o.size == args[1] for o in objs))
            elif q.l2 == "other - count":
                out.append(len(objs) == int(args[1].lstrip("=")))
            elif q.l2 == "relation - spatial":
                others = [o for o in scene.objects if o.shape == args[1]]
                relation = args[2].removesuffix(" of")
                out.append(bool(objs and others) and all(holds(a, relation, b) for a in objs for b in others if a is not b))
            elif q.l2 == "global - background":
                out.append(scene.background == args[0])
            else:
                raise ValueError(f"the ShapesWorld answerer cannot read tuple {q.tuple!r}")
        return out


def shapes_suite(seed: int = 0, prompts: int = 24) -> list[dict[str, str]]:
    """Dense ShapesWorld prompts with question graphs, as rows of dpg_bench.csv."""
    from focusdiff.shapes.grammar import NUMBERS, RELATION_PHRASES
    from focusdiff.shapes.world import BACKGROUNDS, COLORS, SHAPES, SIZES

    rng = np.random.default_rng(seed)
    rows = []
    plural = {1: "", 2: "s", 3: "s", 4: "s"}
    for i in range(prompts):
        a, b = rng.choice(SHAPES, 2, replace=False)
        ca, cb = rng.choice([c for c in COLORS], 2, replace=False)
        size = str(rng.choice(SIZES))
        n = int(rng.integers(1, 4))
        relation = str(rng.choice(list(RELATION_PHRASES)))
        bg = str(rng.choice([g for g in BACKGROUNDS if g not in (ca, cb)]))
        det_a = "an" if size[0] in "aeiou" else "a"
        group_b = f"{'a' if n == 1 else NUMBERS[n]} {cb} {b}{plural[n]}"
        prompt = f"{det_a} {size} {ca} {a} {RELATION_PHRASES[relation][0]} {group_b} on a {bg} background"
        if bg[0] in "aeiou":
            prompt = prompt.replace(f"on a {bg}", f"on an {bg}")
        item = f"shapes{i:03d}"
        qs = [
            (1, "0", "entity - whole", f"entity - whole ({a})", f"Is there a {a}?"),
            (2, "1", "attribute - size", f"attribute - size ({a}, {size})", f"Is the {a} {size}?"),
            (3, "1", "attribute - color", f"attribute - color ({a}, {ca})", f"Is the {a} {ca}?"),
            (4, "0", "entity - whole", f"entity - whole ({b})", f"Is there a {b}?"),
            (5, "4", "other - count", f"other - count ({b}, =={n})", f"Are there {NUMBERS[n]} {b}{plural[n]}?"),
            (6, "4", "attribute - color", f"attribute - color ({b}, {cb})", f"Is the {b} {cb}?"),
            (7, "1,4", "relation - spatial", f"relation - spatial ({a}, {b}, {relation} of)",
             f"Is the {a} {relation} the {b}{plural[n]}?"),
            (8, "0", "global - background", f"global - background ({bg})", f"Is the background {bg}?"),
        ]
        for qid, dep, cat, tup, question in qs:
            rows.append({"item_id": item, "text": prompt, "keywords": "", "proposition_id": str(qid), "dependency": dep,
                         "category_broad": cat.split(" - ")[0], "category_detailed": cat, "tuple": tup,
                         "question_natural_language": question})
    return rows


def csv_text(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def answer_all(items: list[DPGItem], folder: Path, answerer: Answerer,
               on_item: Callable[[int], None] = lambda n: None) -> dict[str, list[list[bool]]]:
    out = {}
    for item in items:
        out[item.item_id] = [answerer.answers(np.asarray(Image.open(folder / tile_file(item, k)).convert("RGB")), item)
                             for k in range(TILES)]
        on_item(1)
    return out


# --------------------------------------------------------------------------- the benchmark


@dataclass
class DPGSuite(Suite):
    items: list[DPGItem]
    answerer: Answerer


class DPGBench(Benchmark[DPGSuite]):
    name = "dpg_bench"

    def prepare(self, cfg: EvalConfig, folder: Path) -> DPGSuite:
        c = cfg.dpg_bench
        deviations = []
        if c.suite == "shapes":
            questions_file = folder / "dpg_bench.csv"
            atomic_write_text(questions_file, csv_text(shapes_suite(cfg.seed, c.prompts)))
            deviations.append(f"suite: {c.prompts} dense ShapesWorld prompts with question graphs, not the official 1065")
        else:
            questions_file = official_file("dpg_bench", "dpg_bench.csv", cfg.benchmark_dir)
            deviations.append(f"dpg_bench.csv is fetched at the pinned commit but has no pinned sha256 in this release; "
                              f"this run used sha256 {file_sha256(questions_file)}")
        items = load_questions(questions_file)
        if c.answerer == "shapes":
            answerer: Answerer = ShapesAnswerer()
            deviations.append("answers: the exact checker reads each question's tuple, not mPLUG-large")
        else:
            if c.judge is None:
                raise ConfigError("evaluate.dpg_bench.answerer is judge but evaluate.dpg_bench.judge is not set")
            answerer = JudgeAnswerer(build_judge(c.judge, template="{prompt}"))
            deviations.append(f"answers: {c.judge.backend} judge {c.judge.model} asked each question, not mPLUG-large")
        deviations.append("fixed official defects: all CSV rows used, every tile's answers pooled per category, "
                          "'Yes' counts as yes (P(yes) > P(no))")
        return DPGSuite(jobs(items), deviations, items, answerer)

    def lay_out(self, suite: DPGSuite, images: Path) -> None:
        for item in suite.items:  # the official layout: one 2x2 grid per prompt
            tiles = [Image.open(images / tile_file(item, k)).convert("RGB") for k in range(TILES)]
            atomic_write_bytes(images / f"{item.item_id}.png", png_bytes(grid(tiles)))

    def score(self, suite: DPGSuite, images: Path) -> list[Row]:
        answers = answer_all(suite.items, images, suite.answerer)
        return [{"item_id": i.item_id, "tile": k, "prompt": i.prompt, "answers": answers[i.item_id][k],
                 "score": float(np.mean(apply_dependencies(i, answers[i.item_id][k])))}
                for i in suite.items for k in range(TILES)]

    def aggregate(self, suite: DPGSuite, rows: list[Row]) -> dict[str, float]:
        answers: dict[str, list[list[bool]]] = {}
        for r in rows:  # tile order
            answers.setdefault(r["item_id"], []).append(r["answers"])
        return aggregate(suite.items, answers)

    def resampling_units(self, suite: DPGSuite, rows: list[Row]) -> dict[str, np.ndarray]:
        """Prompts (the mean of their 4 tiles' scores), one stratum."""
        return {"prompts": np.array([np.mean([r["score"] for r in rows if r["item_id"] == i.item_id]) for i in suite.items])}

    def statistic(self, sample: dict[str, np.ndarray]) -> dict[str, float]:
        return {"dpg.overall": 100 * float(np.mean(sample["prompts"]))}


BENCHMARK = DPGBench()
