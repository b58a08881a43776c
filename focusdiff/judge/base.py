"""The judge interface: (image, prompt) -> P(yes) / (P(yes) + P(no)), and its failure policy.

Pair-GRPO's reward and PairComp's score are both the probability that a
vision-language judge answers "yes" to QUESTION. Backends differ (an exact checker,
a small learned model, an in-process VLM, an OpenAI-compatible server); callers see
one interface, async-capable with bounded concurrency.

Failure policy: a judge never turns a failure into a score. Items it could not
score raise `JudgeFailure`, which says which items failed and why; the caller
decides whether to fail the step or drop the group (and count it).
"""

from __future__ import annotations

import asyncio
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from focusdiff.errors import FocusdiffError

QUESTION = 'Does this image match the description "{prompt}", please directly respond with yes or no.'

ImageLike = Image.Image | np.ndarray


def to_rgb(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image or a uint8 (H, W, 3) array."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got dtype {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    return image.convert("RGB")


def question(prompt: str) -> str:
    return QUESTION.format(prompt=prompt)


@dataclass(frozen=True)
class Verdict:
    """The judge's probabilities of answering yes and no (case variants summed)."""

    p_yes: float
    p_no: float

    def __post_init__(self) -> None:
        for name, p in (("p_yes", self.p_yes), ("p_no", self.p_no)):
            if not (math.isfinite(p) and 0.0 <= p <= 1.0 + 1e-6):
                raise ValueError(f"{name} must be a probability, got {p}")
        if self.p_yes + self.p_no <= 0:
            raise ValueError("p_yes + p_no is 0: the judge answered neither yes nor no")

    @property
    def score(self) -> float:
        return self.p_yes / (self.p_yes + self.p_no)


@dataclass(frozen=True)
class ItemFailure:
    index: int
    prompt: str
    reason: str


class JudgeFailure(FocusdiffError):
    """Some items could not be judged. `failures` says which and why; `verdicts` holds
    the items that were judged (None where an item failed), so a caller may drop a group."""

    def __init__(self, judge: str, failures: list[ItemFailure], verdicts: list[Verdict | None]):
        self.judge = judge
        self.failures = failures
        self.verdicts = verdicts
        shown = "; ".join(f"item {f.index} ({f.prompt!r}): {f.reason}" for f in failures[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"judge {judge!r} could not score {len(failures)} of {len(verdicts)} items: {shown}{more}")


class Judge(ABC):
    """Score (image, prompt) pairs. Subclasses implement `_judge_one` (async)."""

    name: str = "judge"

    # What a VLM backend is asked about each (image, prompt). The reward and PairComp use
    # QUESTION; DPG-Bench asks its own questions verbatim ("{prompt}").
    template: str = QUESTION

    def __init__(self, max_concurrency: int = 8):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency

    def ask(self, prompt: str) -> str:
        return self.template.format(prompt=prompt)

    @abstractmethod
    async def _judge_one(self, image: ImageLike, prompt: str) -> Verdict:
        """One verdict, or an exception saying why there is none."""

    async def ajudge(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[Verdict]:
        """Verdicts in input order; raises JudgeFailure listing every item that failed."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(i: int) -> Verdict | ItemFailure:
            async with gate:
                try:
                    return await self._judge_one(images[i], prompts[i])
                except Exception as exc:  # every failure is reported, never scored
                    return ItemFailure(i, prompts[i], f"{type(exc).__name__}: {exc}")

        results = await asyncio.gather(*(one(i) for i in range(len(images))))
        failures = [r for r in results if isinstance(r, ItemFailure)]
        if failures:
            raise JudgeFailure(self.name, failures, [None if isinstance(r, ItemFailure) else r for r in results])
        return list(results)

    def judge(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[Verdict]:
        """Synchronous `ajudge`; safe to call from code that already runs an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ajudge(images, prompts))
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["value"] = asyncio.run(self.ajudge(images, prompts))
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def scores(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[float]:
        return [v.score for v in self.judge(images, prompts)]


def item_failure(index: int, prompt: str, exc: BaseException) -> ItemFailure:
    return ItemFailure(index, prompt, f"{type(exc).__name__}: {exc}")


class BatchedJudge(Judge):
    """A judge that scores items in batches of `batch_size` in a worker thread (a model's
    forward pass), so the event loop is never blocked. Subclasses implement `_judge_batch`,
    which returns a Verdict or an ItemFailure per index: a bad item fails alone."""

    batch_size: int = 8

    @abstractmethod
    def _judge_batch(self, indices: range, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[Verdict | ItemFailure]:
        """One outcome per index, in order."""

    async def _judge_one(self, image: ImageLike, prompt: str) -> Verdict:
        return (await self.ajudge([image], [prompt]))[0]

    async def ajudge(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[Verdict]:
        """Verdicts in input order, `batch_size` items per batch, off the event loop."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        outcomes: list[Verdict | ItemFailure] = []
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            outcomes += await asyncio.to_thread(self._judge_batch, range(start, stop), images, prompts)
        failures = [o for o in outcomes if isinstance(o, ItemFailure)]
        if failures:
            raise JudgeFailure(self.name, failures, [None if isinstance(o, ItemFailure) else o for o in outcomes])
        return outcomes  # type: ignore[return-value]
