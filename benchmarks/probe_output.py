"""Where benchmarks/gpu_probes.py puts its rows: one file, $OUT/probes.json, for every probe of a run.

A lent GPU machine returns at most eight files from a device command (benchmarks/README.md, "The GPU run"), so the
probes of run_gpu_suite.sh share one JSON file (and one log) instead of writing one each. The file is rewritten
after each probe: a killed run keeps the probes that finished.

    {"device", "torch", "cuda", "run", "probes": {NAME: {"date", "command", "rows": [...]}, ...}}

`run` identifies the run_gpu_suite.sh call that wrote it (PROBES_RUN): a probe of another run starts the file anew,
so probes of an earlier run in the same folder are never mixed in. A probe run by hand (no PROBES_RUN) adds its
probe to the file there, replacing that probe's earlier entry.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

FILE_NAME = "probes.json"


def write_probe_rows(out_dir: str | os.PathLike, probe: str, rows: list, head: dict,
                     run: Optional[str] = None) -> Path:
    """Add probe `probe`'s rows to `out_dir`/probes.json (`head`: device, torch, cuda), written through a temporary
    file and a rename; returns the file's path."""
    path = Path(out_dir) / FILE_NAME
    doc = None
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = None
    if not isinstance(doc, dict) or doc.get("run") != run or not isinstance(doc.get("probes"), dict):
        doc = {"probes": {}}
    doc.update(head)
    doc["run"] = run
    doc["probes"][probe] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": f"python benchmarks/gpu_probes.py {probe}", "rows": rows}
    tmp = path.with_name(f".{FILE_NAME}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return path
