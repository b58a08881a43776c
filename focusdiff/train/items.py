"""Training items and their order: what each rollout slot of each step draws.

An item is two prompts. A *paired* item is a pair of the dataset (one fine-grained
difference, ground-truth images when the dataset has them); an *unpaired* item is two
unpaired prompts taken together, as the reference trainer consumes them (no joint
group, no injection). Every pair is used (the reference loader read only half).

Order is a pure function of (seed, global item index): epoch e is a seeded permutation
of all items, and item k of the run is position k mod n of epoch k // n. So the data
order needs no state of its own to resume, and a run on W processes draws the same
items in the same slots as one process accumulating W micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focusdiff.data.schema import Dataset
from focusdiff.errors import DataError


@dataclass(frozen=True)
class TrainItem:
    id: str
    prompts: tuple[str, str]
    images: tuple[Path | None, Path | None]  # ground truths, absolute paths (paired items only)
    category: str  # PairComp category slug, "unpaired" or "uncategorized"
    paired: bool

    @property
    def has_ground_truth(self) -> bool:
        return self.paired and all(p is not None for p in self.images)


def train_items(dataset: Dataset, unpaired: bool = True, pairs_per_category: int | None = None) -> list[TrainItem]:
    """The train split's items: every pair, then the unpaired prompts two at a time (an odd
    last prompt is paired with the first, so none is left out). With `pairs_per_category`,
    only the first that many pairs of each category (in file order): a small set that a run
    revisits, to check that the reward rises at all on prompts it has seen."""
    train = dataset.split("train")
    pairs, taken = [], {}
    for p in train.pairs:
        taken[p.category] = taken.get(p.category, 0) + 1
        if pairs_per_category is None or taken[p.category] <= pairs_per_category:
            pairs.append(p)
    items = [
        TrainItem(
            id=p.id,
            prompts=(p.prompt1, p.prompt2),
            images=(dataset.image_path(p.image1) if p.image1 else None, dataset.image_path(p.image2) if p.image2 else None),
            category=p.category or "uncategorized",
            paired=True,
        )
        for p in pairs
    ]
    if unpaired and train.prompts:
        prompts = list(train.prompts)
        if len(prompts) % 2:
            prompts.append(prompts[0])
        items += [
            TrainItem(id=f"{a.id}+{b.id}", prompts=(a.prompt, b.prompt), images=(None, None), category="unpaired",
                      paired=False)
            for a, b in zip(prompts[::2], prompts[1::2])
        ]
    if not items:
        raise DataError("the train split has no pairs and no unpaired prompts", file=dataset.root / "pairs.jsonl")
    for item in items:
        for path in item.images:
            if path is not None and not path.is_file():
                raise DataError(f"ground-truth image of pair {item.id} not found", file=path)
    return items


class ItemOrder:
    """Item k of the run: a seeded permutation per epoch (no state to save)."""

    def __init__(self, num_items: int, seed: int):
        if num_items < 1:
            raise ValueError("no items to order")
        self.num_items, self.seed = num_items, seed
        self._epoch, self._perm = -1, np.arange(0)

    def __call__(self, k: int) -> int:
        epoch = k // self.num_items
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return int(self._perm[k % self.num_items])


def global_item_index(step: int, micro: int, rank: int, slot: int, grad_accum: int, world: int, per_micro: int) -> int:
    """Which item of the run a slot holds; W processes x A micro-batches tile the same
    sequence as 1 process x (W*A) micro-batches."""
    return ((step * grad_accum + micro) * world + rank) * per_micro + slot


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, item index, ...), for per-row generators and coin flips."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))
