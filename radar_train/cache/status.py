"""`radar-cache status` (progress, size, latent statistics) and `radar-cache verify` (re-read every
complete shard: counts, checksums, records against the plan; every planned shard present)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import zarr

from radar_train.cache import schema
from radar_train.cache.layout import dir_bytes, live_writer, scan_cache, why_unexpected
from radar_train.cache.plan import Plan
from radar_train.cache.schema import Manifest, read_manifest
from radar_train.cache.writer import array_checksum, expected_shapes
from radar_train.inputs import InputError, reading


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------------- status
def latent_statistics(manifest: Manifest, shards: dict[int, Path], max_pairs: int = 2048) -> dict:
    """Mean/std of fhat_hq and fhat_lq, the relative HQ–LQ distance ‖hq − lq‖/‖hq‖ per pair (mean, p50,
    p95, max) and the share of LQ tokens equal to HQ per scale (None where LQ skipped the scale), over
    the first max_pairs / len(shards) pairs of each shard ({shard: path}). Each shard is read whole and checked
    against its stored checksums first (`read_checked_shard`): one whose data is not what was written (a chunk
    file gone reads as zeros) is left out, its reason under "left_out" ({shard: message})."""
    hq, lq, ihq, ilq = [], [], [], []
    left_out: dict[int, str] = {}
    per_shard = -(-max_pairs // max(1, len(shards)))
    for shard, p in sorted(shards.items()):
        try:
            a = read_checked_shard(p, manifest, shard)
        except InputError as e:
            left_out[shard] = str(e)
            continue
        hq.append(a[schema.FHAT_HQ][:per_shard].astype(np.float32))
        lq.append(a[schema.FHAT_LQ][:per_shard].astype(np.float32))
        ihq.append(a[schema.INDICES_HQ][:per_shard].copy())
        ilq.append(a[schema.INDICES_LQ][:per_shard].copy())
        del a  # (the rest of the shard)
    if not hq:
        return {"left_out": left_out} if left_out else {}
    hq_a, lq_a, ihq_a, ilq_a = (np.concatenate(x) for x in (hq, lq, ihq, ilq))
    n = hq_a.shape[0]
    d = latent_distance(hq_a, lq_a)
    agree = token_agreement(manifest.patch_nums, ihq_a, ilq_a)
    return {"pairs": n, "hq_mean": float(hq_a.mean()), "hq_std": float(hq_a.std()), "lq_mean": float(lq_a.mean()),
            "lq_std": float(lq_a.std()), **{f"rel_diff_{k}": v for k, v in distance_summary(d).items()},
            "token_agreement": agree, "left_out": left_out}


def token_agreement(patch_nums, indices_hq: np.ndarray, indices_lq: np.ndarray) -> list[Optional[float]]:
    """Per scale, the share of LQ tokens equal to HQ's over the pairs ((N, L) token indices of the whole schedule);
    None where the LQ run skipped the scale (its indices are -1 there)."""
    agree, off = [], 0
    for pn in patch_nums:
        a, b = indices_hq[:, off: off + pn * pn], indices_lq[:, off: off + pn * pn]
        off += pn * pn
        agree.append(None if bool((b < 0).all()) else float((a == b).mean()))
    return agree


def latent_distance(hq: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """(N, ...) x2 -> (N,) relative distance d = ‖hq − lq‖₂ / ‖hq‖₂ of each pair (float64 sums)."""
    a, b = hq.reshape(hq.shape[0], -1).astype(np.float64), lq.reshape(lq.shape[0], -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)


def distance_summary(d: np.ndarray) -> dict:
    """mean, p50, p95 and max of the distances."""
    return {"mean": float(d.mean()), "p50": float(np.median(d)), "p95": float(np.percentile(d, 95)),
            "max": float(d.max())}


def cache_status(cache_dir: str, stat_shards: int = 8) -> dict:
    """Shards done / pending / temporary, samples, bytes on disk, and latent statistics over the first
    `stat_shards` complete shards (0 = none, -1 = all)."""
    manifest = read_manifest(cache_dir)
    scan = scan_cache(cache_dir, manifest.num_shards)
    done = sorted(scan.complete)
    samples = sum(manifest.shard_range(s)[1] - manifest.shard_range(s)[0] for s in done)
    shard_bytes = sum(dir_bytes(scan.complete[s]) for s in done)
    chosen = done if stat_shards < 0 else done[:stat_shards]
    return {
        "cache": str(cache_dir), "manifest": manifest, "shards_total": manifest.num_shards, "shards_done": len(done),
        "shards_pending": manifest.num_shards - len(done), "shards_temporary": sum(map(len, scan.temporary.values())),
        "temporary": sorted(scan.temporary),
        "unexpected": [f"{p} ({why_unexpected(p, manifest.num_shards)})" for p in scan.unexpected],
        "samples_done": samples, "samples_total": manifest.num_samples, "bytes": dir_bytes(cache_dir),
        "bytes_per_pair": shard_bytes / samples if samples else None, "stat_shards": len(chosen),
        "stats": latent_statistics(manifest, {s: scan.complete[s] for s in chosen}),
    }


def format_status(st: dict) -> str:
    m: Manifest = st["manifest"]
    plan = Plan.from_dict(m.plan)
    pct = 100.0 * st["samples_done"] / max(1, st["samples_total"])
    lines = [
        f"cache:    {st['cache']} (format {m.format_version}, radar_train {m.radar_train_version}, created {m.created})",
        f"model:    {m.model['preset']} (vae {m.model['vae']['value'][:16]}, var {m.model['var']['value'][:16]}); "
        f"method {m.accel['method']}; latents {'x'.join(map(str, m.latent_shape))} {m.latent_dtype}",
        f"plan:     {plan.describe()}",
        f"shards:   {st['shards_done']} done, {st['shards_pending']} pending, {st['shards_temporary']} temporary"
        + (f" (shards {st['temporary']})" if st["temporary"] else ""),
        f"samples:  {st['samples_done']} / {st['samples_total']} ({pct:.1f} %)",
        f"disk:     {_fmt_bytes(st['bytes'])}"
        + (f" ({_fmt_bytes(st['bytes_per_pair'])} per pair)" if st["bytes_per_pair"] else ""),
    ]
    if st["unexpected"]:
        lines.append(f"unexpected: {', '.join(st['unexpected'])}")
    s = st["stats"]
    for shard, why in (s.get("left_out") or {}).items():
        lines.append(f"left out of the latent statistics: shard {shard}: {why}")
    if s.get("pairs"):
        agree = " ".join("skip" if a is None else f"{a:.2f}" for a in s["token_agreement"])
        lines += [
            f"latents over {st['stat_shards'] - len(s['left_out'])} shards ({s['pairs']} pairs): fhat_hq mean "
            f"{s['hq_mean']:+.4f} std "
            f"{s['hq_std']:.4f}; fhat_lq mean {s['lq_mean']:+.4f} std {s['lq_std']:.4f}",
            f"  |hq-lq|/|hq| per pair: mean {s['rel_diff_mean']:.4f}, p50 {s['rel_diff_p50']:.4f}, "
            f"p95 {s['rel_diff_p95']:.4f}, max {s['rel_diff_max']:.4f}",
            f"  LQ tokens equal to HQ, per scale {m.patch_nums}: {agree}",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- verify
def _data_files(array_dir: Path) -> str:
    files = sorted(str(p) for p in (array_dir / "c").rglob("*") if p.is_file()) if (array_dir / "c").exists() else []
    return ", ".join(files) or str(array_dir)


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def shard_arrays(group) -> dict[str, np.ndarray]:
    """Every array of an open shard group, read whole."""
    return {name: group[name][...] for name in schema.ARRAY_NAMES}


def read_checked_shard(path: Path, manifest: Manifest, shard: int) -> dict[str, np.ndarray]:
    """Every array of complete shard `shard` at `path`, each equal to the checksum the writer stored; InputError
    naming the shard otherwise (unreadable, not marked complete, a format_version this radar_train does not read,
    another record count than the manifest plans, a shape or dtype the manifest does not give, data that differs
    from what was written, e.g. a chunk file gone: Zarr reads it as zeros, or another shard's records: a shard
    folder copied to the wrong name)."""
    if path.is_dir() and not (path / "zarr.json").is_file():  # (Zarr's "not found" for a folder that is there)
        raise InputError(f"{path}: cache shard is not a Zarr group (its zarr.json is missing; run `radar-cache "
                         f"verify`)")
    with reading(path, "cache shard"):
        g = zarr.open_group(schema.shard_store(path), mode="r")
        attrs = dict(g.attrs)
        if attrs.get("complete") is not True:
            raise InputError(f"{path}: cache shard is not marked complete (run `radar-cache verify`)")
        version = schema.shard_version_problem(attrs)
        if version:  # its arrays may mean something else than this code reads into them
            raise InputError(f"{path}: cache shard {version}")
        first, stop = manifest.shard_range(shard)
        if attrs.get("count") != stop - first:
            raise InputError(f"{path}: cache shard holds {attrs.get('count')!r} records, the manifest plans "
                             f"{stop - first} (run `radar-cache verify`)")
        arrays = shard_arrays(g)
    checksums = attrs.get("checksums") if isinstance(attrs.get("checksums"), dict) else {}
    bad = []
    for name, (shape, dtype) in expected_shapes(manifest, stop - first).items():
        a = arrays[name]
        if a.shape != shape or a.dtype != np.dtype(dtype):
            bad.append(f"{name} is {a.shape} {a.dtype}, expected {shape} {dtype}")
        elif checksums.get(name) != array_checksum(a):
            bad.append(f"{name} differs from its stored checksum")
    if not bad:
        bad = _misplaced(arrays, attrs, manifest, shard)
    if bad:
        raise InputError(f"{path}: cache shard {', '.join(bad)} (run `radar-cache verify` for its files)")
    return arrays


def planned_records(plan: Plan, start: int, stop: int) -> dict[str, np.ndarray]:
    """The record arrays (label, seed, index) the plan puts at samples [start, stop)."""
    labels, seeds = plan.labels_seeds(start, stop)
    return {schema.LABEL: labels, schema.SEED: seeds, schema.INDEX: np.arange(start, stop)}


def _misplaced(arrays: dict[str, np.ndarray], attrs: dict, manifest: Manifest, shard: int) -> list[str]:
    """What says that a shard's records are not those the plan puts at `shard` (each its own checksums pass)."""
    first, stop = manifest.shard_range(shard)
    bad = [] if attrs.get("shard") == shard else [f"is marked shard {attrs.get('shard')!r}, not {shard}"]
    for name, planned in planned_records(Plan.from_dict(manifest.plan), first, stop).items():
        if not np.array_equal(arrays[name], planned):
            bad.append(f"{name} records differ from the plan (samples {first}..{stop - 1})")
    return bad


def _version_problem(attrs: dict) -> Optional[str]:
    """The shard's format_version problem (schema.shard_version_problem) when its attributes claim to be a
    finished shard (marked complete, or carrying a version); a shard never finished is reported as that."""
    if attrs.get("complete") is True or "format_version" in attrs:
        return schema.shard_version_problem(attrs)
    return None


def verify_shard(manifest: Manifest, plan: Plan, shard: int, path: Path) -> list[str]:
    """Problems of one complete shard (empty = fine)."""
    try:
        g = zarr.open_group(schema.shard_store(path), mode="r")
        attrs = dict(g.attrs)
    except Exception as e:  # noqa: BLE001 - any failure to open is the problem we report
        return [f"{path}: cannot open the group ({_one_line(e)})"]
    version = _version_problem(attrs)
    if version:  # the rest is read in a format this code does not know: not checked
        return [f"{path}: {version} ({path / 'zarr.json'})"]
    start, stop = plan.shard_range(shard)
    problems = []
    if attrs.get("complete") is not True:
        problems.append(f"{path}: attributes do not mark shard {shard} complete (complete: "
                        f"{json.dumps(attrs.get('complete'))}; {path / 'zarr.json'})")
    if attrs.get("shard") != shard:
        problems.append(f"{path}: attributes name shard {json.dumps(attrs.get('shard'))}, not {shard} "
                        f"({path / 'zarr.json'})")
    if attrs.get("count") != stop - start:  # (as JSON: a count of "16", a string, is not 16)
        problems.append(f"{path}: count {json.dumps(attrs.get('count'))} in the attributes, the plan has "
                        f"{stop - start}")
    checksums = attrs.get("checksums", {})
    if not isinstance(checksums, dict):
        problems.append(f"{path}: attributes hold no checksums object ({path / 'zarr.json'})")
        checksums = {}
    planned = planned_records(plan, start, stop)
    for name, (shape, dtype) in expected_shapes(manifest, stop - start).items():
        where = path / name
        try:
            a = g[name][...]
        except Exception as e:  # noqa: BLE001
            problems.append(f"{where}: unreadable ({_one_line(e)}); files: {_data_files(where)}")
            continue
        if a.shape != shape or a.dtype != np.dtype(dtype):
            problems.append(f"{where}: {a.shape} {a.dtype}, expected {shape} {dtype}")
            continue
        if name not in checksums:
            problems.append(f"{where}: no checksum stored in the attributes ({path / 'zarr.json'})")
        elif checksums[name] != array_checksum(a):
            problems.append(f"{where}: checksum mismatch (stored {checksums.get(name)}); files: {_data_files(where)}")
        if name in planned and not np.array_equal(a, planned[name]):
            problems.append(f"{where}: records differ from the plan (samples {start}..{stop - 1})")
    return problems


def verify_cache(cache_dir: str, progress: bool = False) -> tuple[list[str], dict]:
    """(problems, counts): every planned shard exists and every complete shard reads back with the planned
    count, records and checksums. counts["leftovers"]: the temporary folders beside complete shards (a killed
    writer's, or one still being written: a race with another writer that has lost); not problems."""
    from radar_train.progress import Progress

    manifest = read_manifest(cache_dir)
    plan = Plan.from_dict(manifest.plan)
    scan = scan_cache(cache_dir, manifest.num_shards)
    problems = [f"{p}: {why_unexpected(p, manifest.num_shards)}" for p in scan.unexpected]
    ok = 0
    for s in Progress(manifest.num_shards, "radar-cache verify", "shards", rate_unit="shard",
                      enabled=progress).iterate(range(manifest.num_shards)):
        if s not in scan.complete:
            a, b = plan.shard_range(s)
            tmp = f" (temporary: {', '.join(p.name for p in scan.temporary[s])})" if s in scan.temporary else ""
            problems.append(f"{Path(cache_dir) / schema.shard_name(s)}: missing (samples {a}..{b - 1}){tmp}")
            continue
        shard_problems = verify_shard(manifest, plan, s, scan.complete[s])
        problems += shard_problems
        ok += not shard_problems
    leftovers = [describe_leftover(p) for s in sorted(scan.complete) for p in scan.temporary.get(s, [])]
    return problems, {"shards_ok": ok, "shards_total": manifest.num_shards, "leftovers": leftovers}


def describe_leftover(path: Path) -> str:
    """One line on a temporary folder of a shard that is complete."""
    writer = live_writer(path)
    who = f"still written by {writer}" if writer else "left by a killed writer"
    return (f"{path}: a temporary copy of a complete shard, {who} (the next `radar-cache run` of the worker "
            f"that owns the shard removes it once its writer has stopped)")


def verify_summary(problems: list[str], counts: dict, cache_dir: Optional[str] = None) -> str:
    head = f"verify {cache_dir}: " if cache_dir else "verify: "
    return head + (f"{counts['shards_ok']}/{counts['shards_total']} shards ok, {len(problems)} problems"
                   if problems else f"all {counts['shards_total']} shards ok")
