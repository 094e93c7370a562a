"""Which of a run's samples (class, seed) are pairs an adapter was trained on.

A cache's sample i has class classes[i mod n] and seed base_seed + i (radar_train.cache.plan), and radar-fid's
sample i has class i mod num_classes and seed --base_seed + i: with both base seeds at 0 (the shipped cache
configs' and, before 2026-12-07, radar-fid's default), the first samples radar-fid scored were the adapter's
training pairs: the same VAR, label, seed and sampler give the same vanilla image the adapter was trained to
restore. This module finds them from the adapter's radar_config.yaml (its `caches` records: plan, training
shards, model and sampler), for radar-fid (a refusal) and radar-generate (a note).

A record counts when its VAR is the pipeline's and its sampler settings are the pipeline's (the engine aside);
a record without those fields (a hand-made radar_config.yaml) counts too. The acceleration does not matter:
the image the adapter learnt is the vanilla one of that class and seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# radar-fid's default --base_seed: past the seeds of any cache of fewer than ten million samples made with the
# default plan.base_seed 0 (the shipped plans hold at most 12,000; ImageNet's training set 1,281,167 images)
HELD_OUT_BASE_SEED = 10_000_000


@dataclass(frozen=True)
class TrainedOverlap:
    """`count` of the run's samples are training pairs, e.g. (`example_class`, `example_seed`), of the caches
    `caches` (their recorded paths); seeds from `held_out_from` on are past every matching cache's plan."""
    count: int
    example_class: int
    example_seed: int
    caches: tuple[str, ...]
    held_out_from: int

    def describe(self, total: int) -> str:
        return (f"{self.count} of the {total} samples (class, seed) are pairs the adapter was trained on (e.g. class "
                f"{self.example_class} seed {self.example_seed}, in {', '.join(self.caches)})")


def _without_engine(sampling: dict) -> dict:
    return {k: v for k, v in sampling.items() if k != "engine"}


def _matching(meta: dict, var_value: Optional[str], sampling: dict) -> list[dict]:
    """The adapter's cache records whose pairs are of this VAR and sampler (see the module's note)."""
    from radar_train.cache.plan import Plan

    out = []
    for record in (meta or {}).get("caches") or []:
        if not isinstance(record, dict) or not isinstance(record.get("plan"), dict):
            continue
        try:
            Plan.from_dict(record["plan"])
        except (KeyError, TypeError, ValueError):
            continue
        var = ((record.get("model") or {}).get("var") or {}).get("value")
        if var is not None and var_value is not None and var != var_value:
            continue
        theirs = record.get("sampling")
        if isinstance(theirs, dict) and _without_engine(theirs) != _without_engine(sampling):
            continue
        out.append(record)
    return out


def _overlap(records: list[dict], hit) -> Optional[TrainedOverlap]:
    """`hit(labels, seeds)` -> (count, index of a first hit or None) over each record's training samples."""
    from radar_train.cache.plan import Plan

    count, example, caches, end = 0, None, [], 0
    for record in records:
        plan = Plan.from_dict(record["plan"])
        end = max(end, plan.base_seed + plan.num_samples)
        labels, seeds = plan.shard_samples([int(s) for s in record.get("train_shards") or []])
        n, first = hit(labels, seeds)
        if n:
            count += n
            caches.append(str(record.get("path")))
            if example is None:
                example = (int(labels[first]), int(seeds[first]))
    if not count:
        return None
    return TrainedOverlap(count, example[0], example[1], tuple(caches), end)


def fid_overlap(meta: dict, var_value: Optional[str], sampling: dict, num_classes: int, base_seed: int,
                num_samples: int) -> Optional[TrainedOverlap]:
    """The training pairs among radar-fid's samples (i: class i mod num_classes, seed base_seed + i, i <
    num_samples); None when there are none."""
    def hit(labels: np.ndarray, seeds: np.ndarray):
        i = seeds - base_seed
        inside = (i >= 0) & (i < num_samples)
        same = np.zeros(len(seeds), dtype=bool)
        same[inside] = labels[inside] == i[inside] % num_classes
        hits = np.flatnonzero(same)
        return len(hits), (int(hits[0]) if len(hits) else None)

    return _overlap(_matching(meta, var_value, sampling), hit)


def grid_overlap(meta: dict, var_value: Optional[str], sampling: dict, labels: Sequence[int],
                 seeds: Sequence[int]) -> Optional[TrainedOverlap]:
    """The training pairs among samples (labels[k], seeds[k]); None when there are none."""
    wanted = set(zip((int(c) for c in labels), (int(s) for s in seeds)))
    wanted_seeds = np.asarray(sorted({s for _, s in wanted}), dtype=np.int64)

    def hit(lab: np.ndarray, sd: np.ndarray):
        near = np.flatnonzero(np.isin(sd, wanted_seeds))  # (a cache of a million samples: its seeds first)
        same = [int(k) for k in near if (int(lab[k]), int(sd[k])) in wanted]
        return len(same), (same[0] if same else None)

    return _overlap(_matching(meta, var_value, sampling), hit)
