"""Cross-stage checks: does a cache fit the decoder a training run is given, and the run it resumes?"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from radar_train.models import ModelIdentity

__all__ = ["cache_mismatches", "check_cache_matches", "pairs_fields", "pairs_differences", "check_resume_caches"]


def _norm(d) -> object:
    return json.loads(json.dumps(d))


def cache_mismatches(manifest, identity: ModelIdentity, latent_shape: Sequence[int],
                     num_classes: Optional[int] = None) -> list[str]:
    """Reasons why a cache (its Manifest) cannot train the decoder with `identity` taking latents of
    `latent_shape` [C, h, w] (and, given `num_classes`, a label conditioning of that many classes); empty if
    it can."""
    out = []
    if num_classes is not None:
        n = _num_classes((manifest.model or {}).get("preset"))
        if n is not None and n != num_classes:
            out.append(f"its labels are those of a generator of {n} classes but model.label_conditioning has "
                       f"{num_classes}")
    if [int(x) for x in manifest.latent_shape] != [int(x) for x in latent_shape]:
        out.append(f"its latents are {list(manifest.latent_shape)} but the decoder takes {list(latent_shape)}")
    vae = (manifest.model or {}).get("vae")
    if not isinstance(vae, dict) or "kind" not in vae:
        out.append("its manifest names no VQ-VAE (model.vae)")
        return out
    if (vae["kind"], vae["value"]) != (identity.kind, identity.value):
        out.append(f"it was made with the VQ-VAE {vae['kind']}:{vae['value']} "
                   f"but the decoder is {identity.kind}:{identity.value}")
    elif _norm(vae.get("config")) != _norm(identity.config):
        diff = sorted(k for k in set(vae.get("config") or {}) | set(identity.config)
                      if _norm((vae.get("config") or {}).get(k)) != _norm(identity.config.get(k)))
        out.append(f"its VQ-VAE config differs from the decoder's in {', '.join(diff)}")
    return out


def _num_classes(preset) -> Optional[int]:
    from radar_train.models import get_preset

    try:
        return get_preset(preset).var.num_classes
    except (KeyError, ValueError, TypeError):
        return None


def check_cache_matches(cache_dir: str, manifest, identity: ModelIdentity, latent_shape: Sequence[int],
                        num_classes: Optional[int] = None) -> None:
    """ValueError (one line, naming the cache) if the cache does not fit the decoder (and its label
    conditioning of `num_classes` classes, if given)."""
    problems = cache_mismatches(manifest, identity, latent_shape, num_classes)
    if problems:
        preset = (manifest.model or {}).get("preset", "?")
        raise ValueError(f"cache {cache_dir} (model preset {preset}) does not match the decoder: "
                         + "; ".join(problems) + " — train with the cache's model (model.decoder.*) or another cache")


def _flat(d: object, prefix: str) -> dict[str, object]:
    """{dotted field: value} of a nested mapping (lists are values)."""
    if isinstance(d, dict) and d:
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: d}


def pairs_fields(record: dict) -> dict[str, object]:
    """The dotted fields of a cache description (PairDataModule.describe(), as a checkpoint's radar.caches keeps
    it) that decide which pairs the cache holds for a sample: the models' identity (not their checkpoint paths),
    the acceleration method's settings (not its files or kernel), the sampling settings but the engine, the
    plan's sample rule, classes, first seed and shard size, the latents' shape and stored dtype, and the
    transformer's compute precision (bf16 draws other tokens for the same seeds; recorded since 2026-12-06, so an
    older checkpoint's record is not compared on it: `pairs_differences`). Not the path
    (a moved cache is the same), the shards, the format or the sample count: a cache that only grew holds the same
    pairs and more. (Until 2026-12-06 only the rule's text, the same in every cache, was compared: a resume on a
    cache of other seeds or another shard size went on silently, and its adapter recorded trained pairs as held
    out.)"""
    from radar_train.cache.schema import INFORMATIONAL_FIELDS
    from radar_train.inference.pipeline import _accel_settings

    fields: dict[str, object] = {}
    for key in ("model", "sampling"):
        if isinstance(record.get(key), dict):
            fields.update(_flat(_norm(record[key]), key))
    if isinstance(record.get("accel"), dict):
        fields.update(_flat(_accel_settings(record["accel"]), "accel"))
    if isinstance(record.get("plan"), dict):  # (the rule, its classes and first seed: which pair sample i is; the
        # shard size: which samples shard s holds, as the shard numbers a run records are read)
        fields.update({f"plan.{k}": _norm(record["plan"][k]) for k in ("rule", "classes", "base_seed", "shard_size")
                       if k in record["plan"]})
    for key in ("latent_shape", "latent_dtype", "precision"):  # (precision: the transformer's, which draws the tokens)
        if key in record:
            fields[key] = _norm(record[key])
    return {k: v for k, v in fields.items()
            if k not in INFORMATIONAL_FIELDS and not any(k.startswith(f + ".") for f in INFORMATIONAL_FIELDS)}


def pairs_differences(stored: dict, current: dict, limit: int = 4) -> list[str]:
    """"accel.method fastvar -> stagevar" for each field of `pairs_fields` in which the cache a checkpoint was
    trained on differs from the one given now (at most `limit`, then a count); a field only one side records
    (a checkpoint of an older radar_train) is not compared."""
    a, b = pairs_fields(stored), pairs_fields(current)
    diffs = [f"{k} {_value(a[k])} -> {_value(b[k])}" for k in sorted(a) if k in b and a[k] != b[k]]
    return diffs[:limit] + ([f"{len(diffs) - limit} more"] if len(diffs) > limit else [])


def _value(v: object, limit: int = 40) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def check_resume_caches(checkpoint: dict, current: Sequence[dict], source: str = "the checkpoint") -> None:
    """ValueError (one line naming --data.caches) if the run resumed from `checkpoint` is given other pairs than
    it was trained on: another number of caches, or a cache whose pairs are made otherwise (`pairs_differences`,
    compared in list order). `current` is PairDataModule.describe() of the set-up datamodule. A checkpoint
    that records no caches (trained on loaders of its own) is not compared. Resuming on other pairs would give
    an adapter whose final/ records only the new caches although its first steps trained on the old ones."""
    stored = (checkpoint.get("radar") or {}).get("caches") if isinstance(checkpoint, dict) else None
    if not stored or not current:
        return
    tail = "the checkpoint was trained on other pairs; start a new run folder"
    if len(stored) != len(current):
        raise ValueError(f"--data.caches names {len(current)} cache(s) but {source} was trained on "
                         f"{len(stored)} ({', '.join(str(r.get('path')) for r in stored)}): {tail}")
    problems = []
    for i, (old, new) in enumerate(zip(stored, current)):
        diffs = pairs_differences(old, new) if isinstance(old, dict) else []
        if diffs:
            problems.append(f"data.caches[{i}] ({new.get('path')}; {source} trained on {old.get('path')}): "
                            + ", ".join(diffs))
    if problems:  # (in list order: a run's caches reordered are compared with other ones)
        raise ValueError("--data.caches differs from the caches of the run, compared in the run's order: "
                         + "; ".join(problems) + f": {tail}")
    from radar_train.config import format_int_list

    trained_on = [(i, sorted(set(old.get("train_shards") or []) & set(new.get("val_shards") or [])), old)
                  for i, (old, new) in enumerate(zip(stored, current)) if isinstance(old, dict)]
    held = [f"data.caches[{i}] val_shards {format_int_list(both, ',')} (trained on: {source}'s train_shards "
            f"{format_int_list(old.get('train_shards') or [], ',')})" for i, both, old in trained_on if both]
    if held:
        raise ValueError(f"--data.caches: {'; '.join(held)}: the adapter would record pairs it was trained on as "
                         f"held out (radar-eval scores an adapter on its val_shards); keep them out of val_shards")


def carry_trained_shards(checkpoint: dict, current: list[dict]) -> None:
    """`current` (the run's PairDataModule.describe(), recorded in its checkpoints and adapters) with the shards the
    checkpoint's run trained on added to each cache's train_shards: a run resumed on another split trained on both,
    and its adapter's record of what it trained on (which radar-eval keeps out of its held-out shards) must say so."""
    stored = (checkpoint.get("radar") or {}).get("caches") if isinstance(checkpoint, dict) else None
    for old, new in zip(stored or [], current):
        if isinstance(old, dict) and isinstance(new, dict) and old.get("train_shards") and "train_shards" in new:
            new["train_shards"] = sorted(set(new["train_shards"] or []) | set(old["train_shards"]))
