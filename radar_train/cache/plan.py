"""The cache plan: sample i -> (label, seed) as a pure function of i and the plan, and the shards.

Sample i has label classes[i mod n] and seed base_seed + i (n = number of classes in the set). Shard s
holds samples [s·shard_size, min((s+1)·shard_size, num_samples)).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from radar_train.cache.config import PlanArgs
from radar_train.config import format_int_list, parse_int_list
from radar_train.seeding import seed_range_problems

RULE = "label = classes[i % len(classes)], seed = base_seed + i"
# shards (a Zarr folder each) one cache may plan: far beyond a data set (ImageNet's 1.28 M images in shards of 256
# are 5,000), and few enough that the per-shard lists and folder scans of a run, `status` and `verify` stay small
MAX_SHARDS = 1_000_000


def resolve_classes(spec: Union[str, Sequence[int]], num_classes: int) -> tuple[list[int], list[str]]:
    """(class list, problems) for "all", "START:STOP" (STOP excluded), "0-3,7" (ranges inclusive, as in
    --classes elsewhere) or an explicit list, checked against the model."""
    if isinstance(spec, str):
        s = spec.strip()
        if s == "all":
            return list(range(num_classes)), []
        m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", s)
        if m:
            classes = list(range(int(m.group(1)), int(m.group(2))))
        else:
            try:
                classes = parse_int_list(s, "plan.classes")
            except ValueError:
                return [], [f'plan.classes must be "all", "START:STOP", "0-3,7" or a list of ints, got {spec!r}']
    else:
        classes = [int(c) for c in spec]
    problems = []
    if not classes:
        problems.append(f"plan.classes {spec!r} is empty")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        problems.append(f"plan.classes {format_int_list(bad, ',')} out of range: the model has "
                        f"{num_classes} classes (0..{num_classes - 1})")
    if len(set(classes)) != len(classes):
        problems.append("plan.classes lists a class twice")
    return classes, problems


@dataclass(frozen=True)
class Plan:
    classes: tuple[int, ...]
    images_per_class: Optional[int]  # None: `total` samples, the classes cycled
    total: Optional[int]
    base_seed: int
    shard_size: int

    @staticmethod
    def from_args(args: PlanArgs, num_classes: int) -> "Plan":
        """The resolved plan; ValueError listing every problem."""
        classes, problems = resolve_classes(args.classes, num_classes)
        if (args.images_per_class is None) == (args.num_samples is None):
            problems.append("give exactly one of plan.images_per_class and plan.num_samples (set the other to null)")
        plan = None
        if not problems:
            plan = Plan(tuple(classes), args.images_per_class, args.num_samples, args.base_seed, args.shard_size)
            problems += seed_range_problems("plan.base_seed", plan.base_seed, plan.num_samples)
            if plan.shard_size >= 1 and plan.num_shards > MAX_SHARDS:
                given = "plan.images_per_class" if args.images_per_class is not None else "plan.num_samples"
                problems.append(f"{given}: {plan.num_samples} samples in shards of {plan.shard_size} make "
                                f"{plan.num_shards} shards; a cache holds at most {MAX_SHARDS:,} (a folder each): "
                                f"fewer samples, or a larger plan.shard_size")
        if problems:
            raise ValueError("invalid plan: " + "; ".join(problems))
        return plan

    @property
    def num_samples(self) -> int:
        if self.images_per_class is not None:
            return self.images_per_class * len(self.classes)
        return int(self.total)

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        a = shard * self.shard_size
        return a, min(a + self.shard_size, self.num_samples)

    def labels_seeds(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64, seeds int64) of samples [start, stop)."""
        i = np.arange(start, stop, dtype=np.int64)
        classes = np.asarray(self.classes, dtype=np.int64)
        return classes[i % len(classes)], self.base_seed + i

    def shard_samples(self, shards: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64, seeds int64) of the samples of `shards`, in shard order; shards past the plan hold none."""
        parts = [self.labels_seeds(*self.shard_range(int(s))) for s in shards if 0 <= int(s) < self.num_shards]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate([lab for lab, _ in parts]), np.concatenate([sd for _, sd in parts])

    def to_dict(self) -> dict:
        """As in the manifest: num_samples is always the resolved total."""
        return {"classes": list(self.classes), "images_per_class": self.images_per_class,
                "num_samples": self.num_samples, "base_seed": self.base_seed, "shard_size": self.shard_size,
                "num_shards": self.num_shards, "rule": RULE}

    @staticmethod
    def from_dict(d: dict) -> "Plan":
        ipc = d["images_per_class"]
        return Plan(tuple(d["classes"]), ipc, None if ipc is not None else d["num_samples"], d["base_seed"],
                    d["shard_size"])

    def describe(self) -> str:
        n = len(self.classes)
        cls = f"{n} classes" if self.classes != tuple(range(n)) else f"classes 0..{n - 1}"
        per = f"{self.images_per_class} per class" if self.images_per_class is not None else \
            f"{self.total} in total"
        return (f"{self.num_samples} samples ({cls}, {per}, seeds {self.base_seed}..{self.base_seed + self.num_samples - 1})"
                f" in {self.num_shards} shards of {self.shard_size}")
