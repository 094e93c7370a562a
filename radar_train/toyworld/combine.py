"""`radar-toy combine`: several `radar-toy measure` results as one, for adapters measured in separate runs.

A seed of an adapter trained later (another SLURM job, another day) need not mean remeasuring every adapter:
its own `radar-toy measure` run gives its rows, and `combine` puts them beside the earlier run's, with the
groups (`paa_s0`, `paa_s1` → `paa`: mean ± sample standard deviation) recomputed over all of them.

That is only sound when the runs measured the same thing, so every input must agree with the first on what
defines the measurement — the models, classifier, sampler, samples (`images_per_class`, `base_seed`), toy-FID
reference — and on every number that does not depend on an adapter: the reconstruction PSNR, the toy FID
and sharpness baselines, the vanilla row and the row of each setting both measured. `radar-toy measure` is deterministic, so
a run at a later commit (on the CPUs measured so far, also on another CPU) reproduces these to the last digit;
if they differ, the code, the models or the machine's arithmetic changed and the inputs are refused, naming the
first difference. An adapter name in two inputs must
carry the same numbers in both (it is then listed once); with different numbers it is refused.

Writes `metrics.json` (the shape of `radar-toy measure`'s, with `sources`: file, commit, date, device and
command of each input) and `metrics.md`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from radar_train.bench.record import environment
from radar_train.outputs import check_output_dir, staged_entries, write_report
from radar_train.toyworld.measure import TABLE_COLUMNS, flat_rows, group_summary, markdown_table

OUTPUT_FILES = ("metrics.json", "metrics.md", "toyworld_grid.png")  # (the grid: radar-toy measure's, which a
# combination does not draw; an earlier run's in the folder would stand beside the combined results)
SAME_CONFIG = ("model", "classifier", "sampling", "images_per_class", "base_seed", "fid_reference_images",
               "num_heldout_images")
"""The `config` fields that define what is measured (not how many settings or adapters, nor the batch size)."""
SAME_SECTIONS = ("num_samples", "reconstruction", "vanilla")
_REQUIRED = ("config", "vanilla", "methods", "reconstruction", "toy_fid")
_RUN_ONLY = ("adapter_dir",)
"""Keys of an adapter row that name where it came from rather than what it measured."""


def load_result(path: str | Path) -> dict[str, Any]:
    """A `radar-toy measure` metrics.json; ValueError naming the file if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--inputs: {p} is not a file (give radar-toy measure's metrics.json)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--inputs: {p} is not JSON ({e})") from None
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k), dict) for k in _REQUIRED):
        raise ValueError(f"--inputs: {p} is not a radar-toy measure metrics.json (it needs {', '.join(_REQUIRED)})")
    problem = _structure_problem(doc)
    if problem:
        raise ValueError(f"--inputs: {p} is not a radar-toy measure metrics.json ({problem})")
    return doc


def _is_number(v: Any) -> bool:
    """A finite int or float (radar-toy measure writes null, never NaN: a NaN is a damaged or hand-edited file)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _row_problem(row: Any, where: str) -> str | None:
    """A run's row: a mapping whose table columns are numbers or null."""
    if not isinstance(row, dict):
        return f"{where} is {type(row).__name__}, not a mapping"
    for key, _ in TABLE_COLUMNS:
        if row.get(key) is not None and not _is_number(row[key]):
            return f"{where}.{key} is {json.dumps(row[key])}, not a number"
    return None


def _structure_problem(doc: dict) -> str | None:
    """What of the parts combine and the table read is not of the shape radar-toy measure writes, or None."""
    problem = _row_problem(doc["vanilla"], "vanilla")
    if problem:
        return problem
    for spec, row in doc["methods"].items():
        problem = _row_problem(row, f"methods.{spec}")
        if problem:
            return problem
        adapters = row.get("adapters", {})
        if not isinstance(adapters, dict):
            return f"methods.{spec}.adapters is {type(adapters).__name__}, not a mapping name -> row"
        for name, r in adapters.items():
            problem = _row_problem(r, f"methods.{spec}.adapters.{name}")
            if problem:
                return problem
        if not isinstance(row.get("groups", {}), dict):
            return f"methods.{spec}.groups is {type(row['groups']).__name__}, not a mapping"
    rec, tf = doc["reconstruction"], doc["toy_fid"]
    for key in ("psnr_db", "num_images"):
        if not _is_number(rec.get(key)):
            return f"reconstruction.{key} is not a number"
    for key in ("num_samples", "features", "reference", "notes"):
        if key not in tf:
            return f"toy_fid.{key} is missing"
    ref = tf["reference"]
    if not isinstance(ref, dict) or any(k not in ref for k in ("num_images", "world_seed")):
        return "toy_fid.reference is not a mapping with num_images and world_seed"
    if not isinstance(tf["notes"], list):
        return "toy_fid.notes is not a list"
    if not isinstance(tf.get("baselines", {}), dict):
        return "toy_fid.baselines is not a mapping"
    sharp = doc.get("sharpness", {})
    if not isinstance(sharp, dict) or not isinstance(sharp.get("baselines", {}), dict):
        return "sharpness is not a mapping with a mapping of baselines"
    return None


def _setting_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("adapters", "groups")}


def _adapter_numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _RUN_ONLY}


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """Where `a` and `b` first differ (`where.key: a vs b`), None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {json.dumps(a)} vs {json.dumps(b)}"


def combine(docs: Sequence[dict], names: Sequence[str]) -> dict[str, Any]:
    """The results `docs` (from the files `names`) as one result; ValueError naming the file and the first
    difference if one measured something else than the first, or gives an adapter name other numbers."""
    first, first_name = docs[0], names[0]
    methods: dict[str, dict] = {}
    seen: dict[tuple[str, str], str] = {}
    for doc, name in zip(docs, names):
        diff = (_first_difference({k: first["config"].get(k) for k in SAME_CONFIG},
                                  {k: doc["config"].get(k) for k in SAME_CONFIG}, "config")
                or _first_difference({k: first.get(k) for k in SAME_SECTIONS},
                                     {k: doc.get(k) for k in SAME_SECTIONS}, "")
                or _first_difference(first["toy_fid"].get("baselines"), doc["toy_fid"].get("baselines"),
                                     "toy_fid.baselines")
                or _first_difference(first.get("sharpness", {}).get("baselines"),
                                     doc.get("sharpness", {}).get("baselines"), "sharpness.baselines"))
        if diff:
            raise ValueError(f"--inputs: {name} did not measure what {first_name} measured ({diff.lstrip('.')}): "
                             f"only runs of the same models, samples and code give comparable rows")
        for spec, row in doc["methods"].items():
            base = methods.setdefault(spec, {**_setting_row(row), "adapters": {}})
            diff = _first_difference(_setting_row(base), _setting_row(row), spec)
            if diff:
                raise ValueError(f"--inputs: {name} measured setting {spec} differently from an earlier input "
                                 f"({diff}): only runs of the same models, samples and code give comparable rows")
            for adapter, r in row.get("adapters", {}).items():
                if adapter in base["adapters"]:
                    if _adapter_numbers(base["adapters"][adapter]) != _adapter_numbers(r):
                        raise ValueError(f"--inputs: adapter {adapter} of {spec} is in {seen[spec, adapter]} and in "
                                         f"{name} with different results: measure one of them under another name")
                    continue
                base["adapters"][adapter] = r
                seen[spec, adapter] = name
    for row in methods.values():
        if row["adapters"]:
            row["groups"] = group_summary(row["adapters"])
        else:
            del row["adapters"]
    sources = [{"file": name, **{k: doc.get(k) for k in ("commit", "date", "device", "torch", "command")}}
               for doc, name in zip(docs, names)]
    out = {**environment(torch.device("cpu")), "sources": sources,
           **{k: v for k, v in first.items() if k not in ("device", "torch", "cuda", "commit", "date", "command",
                                                          "methods", "rows", "sources")},
           "methods": methods}
    out["rows"] = flat_rows(out)
    return out


def markdown(report: dict) -> str:
    """measure's table, followed by the inputs it combines."""
    lines = [markdown_table(report), "", "Combined from:", ""]
    lines += [f"- `{s['file']}`: commit {s['commit']}, {s['date']}, {s['device']}" for s in report["sources"]]
    return "\n".join(lines)


def run_combine(inputs: Sequence[str], output: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Combine the metrics.json files `inputs`; write metrics.json and metrics.md to `output` if given
    (existing ones only with `overwrite`; all checks before any write)."""
    if len(inputs) < 2:
        raise ValueError("--inputs: give at least two radar-toy measure results to combine")
    if output is not None:
        check_output_dir(output, OUTPUT_FILES, "--output", overwrite=overwrite,
                         inputs={"--inputs": list(inputs)})
    docs = [load_result(p) for p in inputs]
    report = combine(docs, [str(p) for p in inputs])
    report["markdown"] = markdown(report)
    if output is not None:
        with staged_entries(output, OUTPUT_FILES, overwrite) as stage:
            write_report(stage, "metrics", report)
    return report
