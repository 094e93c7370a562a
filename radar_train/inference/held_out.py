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
    """The sampler settings that decide a sample (a cache's INFORMATIONAL_FIELDS left out: the engine)."""
    from radar_train.cache.schema import INFORMATIONAL_FIELDS

    return {k: v for k, v in sampling.items() if f"sampling.{k}" not in INFORMATIONAL_FIELDS}


def _training_samples(record, var_value: Optional[str], sampling: dict):
    """(labels, seeds, end of the plan's seeds, path) of a cache record's training shards when its pairs are of
    this VAR and sampler (see the module's note); None for a record of others, and for one that does not read
    (a hand-edited radar_config.yaml: radar-train writes every field; nothing can be told of its pairs)."""
    from radar_train.cache.plan import Plan

    try:
        model = record.get("model") or {}
        var = (model.get("var") or {}).get("value")
        if var is not None and var_value is not None and var != var_value:
            return None
        theirs = record.get("sampling")
        if isinstance(theirs, dict) and _without_engine(theirs) != _without_engine(sampling):
            return None
        plan = Plan.from_dict(record["plan"])
        labels, seeds = plan.shard_samples([int(s) for s in record.get("train_shards") or []])
        end = int(plan.base_seed) + plan.num_samples
        labels, seeds = np.asarray(labels, dtype=np.int64), np.asarray(seeds, dtype=np.int64)
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return labels, seeds, end, str(record.get("path"))


def _overlap(meta: dict, var_value: Optional[str], sampling: dict, hits) -> Optional[TrainedOverlap]:
    """`hits(labels, seeds)` -> the run's sample numbers that are among those training samples; each sample of the
    run counts once, however many of the adapter's caches hold it (one adapter trained on a FastVAR and a StageVAR
    cache of the same plan has each pair twice)."""
    caches = meta.get("caches") if isinstance(meta, dict) else None
    found: dict[int, tuple[int, int]] = {}
    names, end = [], 0
    for record in caches if isinstance(caches, list) else []:
        got = _training_samples(record, var_value, sampling) if isinstance(record, dict) else None
        if got is None:
            continue
        labels, seeds, record_end, path = got
        end = max(end, record_end)
        where = hits(labels, seeds)  # {run sample: position among these training samples}
        if where:
            names.append(path)
            for sample, k in where.items():
                found.setdefault(sample, (int(labels[k]), int(seeds[k])))
    if not found:
        return None
    first = found[min(found)]
    return TrainedOverlap(len(found), first[0], first[1], tuple(dict.fromkeys(names)), end)


def fid_overlap(meta: dict, var_value: Optional[str], sampling: dict, num_classes: int, base_seed: int,
                num_samples: int) -> Optional[TrainedOverlap]:
    """The training pairs among radar-fid's samples (i: class i mod num_classes, seed base_seed + i, i <
    num_samples); None when there are none."""
    def hits(labels: np.ndarray, seeds: np.ndarray) -> dict[int, int]:
        i = seeds - base_seed
        inside = np.flatnonzero((i >= 0) & (i < num_samples))
        same = inside[labels[inside] == i[inside] % num_classes]
        return {int(i[k]): int(k) for k in same}

    return _overlap(meta, var_value, sampling, hits)


def grid_overlap(meta: dict, var_value: Optional[str], sampling: dict, labels: Sequence[int],
                 seeds: Sequence[int]) -> Optional[TrainedOverlap]:
    """The training pairs among samples (labels[k], seeds[k]); None when there are none."""
    wanted = {(int(c), int(s)): n for n, (c, s) in enumerate(zip(labels, seeds))}
    wanted_seeds = np.asarray(sorted({s for _, s in wanted}), dtype=np.int64)

    def hits(lab: np.ndarray, sd: np.ndarray) -> dict[int, int]:
        near = np.flatnonzero(np.isin(sd, wanted_seeds))  # (a cache of a million samples: its seeds first)
        out = {}
        for k in near:
            n = wanted.get((int(lab[k]), int(sd[k])))
            if n is not None:
                out.setdefault(n, int(k))
        return out

    return _overlap(meta, var_value, sampling, hits)
