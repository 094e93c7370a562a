"""Copy what a GPU run wrote into its `$OUT` (benchmarks/run_gpu_suite.sh) into benchmarks/gpu/, under the names the
committed runs use:

    python benchmarks/collect_gpu_run.py FOLDER [--suffix b] [--label diagnostics] [--dest benchmarks/gpu]

FOLDER holds one result file, `<date>-<device>.json`, and the run's logs (suite.log, gpu-tests.log, nvidia-smi.txt,
pip.log, probes.log, probes.json). They become `<date><suffix>-<device>[-<label>].json` and, beside it,
`<that name>.suite.log`, `<that name>.gpu-tests.log`, ... (e.g. `2026-12-04-nvidia-h200.json` and
`2026-12-04-nvidia-h200.suite.log`). Nothing is written when a name is taken or FOLDER lacks its result file: one
line says why (exit 2). Then `python -m radar_train.bench.tables --write docs/benchmarks.md` (and README.md) refills
the tables.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_output import FILE_NAME as PROBES_FILE  # noqa: E402

LOGS = ("suite.log", "gpu-tests.log", "nvidia-smi.txt", "pip.log", "probes.log", PROBES_FILE)


def plan(folder: Path, dest: Path, suffix: str = "", label: str = "") -> list[tuple[Path, Path]]:
    """(source, target) pairs; ValueError naming the problem (no result file, two, a name taken, a bad option)."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if not dest.is_dir():
        raise ValueError(f"--dest {dest}: no such folder")
    if not re.fullmatch(r"[a-z]?", suffix) or not re.fullmatch(r"([a-z0-9]+(-[a-z0-9]+)*)?", label):
        raise ValueError(f"--suffix {suffix!r} / --label {label!r}: a letter, and lowercase words joined by '-'")
    results = []
    for p in sorted(folder.glob("*.json")):
        if p.name in LOGS:
            continue
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and "suite" in doc:
            results.append(p)
    if len(results) != 1:
        found = ", ".join(p.name for p in results) or "none"
        raise ValueError(f"{folder}: needs exactly one result file of the GPU suite (<date>-<device>.json), found {found}")
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})-(.+)\.json", results[0].name)
    if m is None:
        raise ValueError(f"{results[0]}: not named <date>-<device>.json")
    stem = f"{m.group(1)}{suffix}-{m.group(2)}" + (f"-{label}" if label else "")
    pairs = [(results[0], dest / f"{stem}.json")]
    pairs += [(folder / name, dest / f"{stem}.{name}") for name in LOGS if (folder / name).is_file()]
    taken = [str(t) for _, t in pairs if t.exists() or t.is_symlink()]  # (a dangling link too: a copy follows it)
    if taken:
        raise ValueError(f"{taken[0]} exists: give another --suffix (e.g. b) or --label")
    return pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/collect_gpu_run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="what the run wrote into $OUT (a lent machine's files_at)")
    ap.add_argument("--dest", default=str(Path(__file__).resolve().parent / "gpu"), help="default benchmarks/gpu")
    ap.add_argument("--suffix", default="", help="a letter after the date, for a second run of the day (b, c, ...)")
    ap.add_argument("--label", default="", help="after the device, e.g. diagnostics (PART=diagnostics)")
    a = ap.parse_args(argv)
    try:
        pairs = plan(Path(a.folder), Path(a.dest), a.suffix, a.label)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for src, target in pairs:
        shutil.copyfile(src, target)
        print(f"{src} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
