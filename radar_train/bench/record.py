"""Benchmark result files: `{"device", "torch", "cuda", "commit", "date", "command", "rows": [...], ...}`.

The files under `benchmarks/` (repo root) have this shape; `python -m radar_train.bench.tables` turns them
into markdown tables. A file is rewritten whole (atomically) each time rows are added, so a run that is
killed keeps what it had measured.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

import radar_train


def device_name(device: torch.device) -> str:
    """CUDA: the GPU's name; CPU: the processor's model name and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)"


def git_commit(cwd: Optional[Path] = None) -> Optional[str]:
    """Short hash of HEAD of the checkout holding this package, with '+dirty' when tracked files differ from
    it; None outside a git checkout, and for a package installed into site-packages (whatever repository that
    lies in is not this code's: it recorded a project's commit that a virtual environment sat in)."""
    if cwd is None:
        cwd = Path(__file__).resolve().parents[2]
        if not radar_train.is_source_checkout(cwd):
            return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, command: Optional[str] = None, commit: Optional[str] = None) -> dict[str, Any]:
    """The document head: where, with what (radar_train's version too: an installed package has no commit) and by
    which command the rows were measured."""
    return {
        "device": device_name(device),
        "radar_train": radar_train.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit or git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command or command_line(),
    }


def command_line(argv: Optional[list[str]] = None) -> str:
    """This process's command line as a user would type it (`radar-bench ...`, `python -m radar_train...`)."""
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0])
    if prog.suffix == ".py":
        try:
            mod = prog.resolve().relative_to(Path(__file__).resolve().parents[2]).with_suffix("")
            head = "python -m " + ".".join(mod.parts)
        except ValueError:
            head = f"python {prog}"
    else:
        head = prog.name
    return " ".join([head, shlex.join(argv[1:])]).strip()


class ResultFile:
    """A result document written to `path` after every change (nothing is written before the first)."""

    def __init__(self, path: Optional[str | Path], head: dict[str, Any]):
        self.path = None if path is None else Path(path)
        self.doc: dict[str, Any] = {**head, "rows": []}

    def add_rows(self, rows: list[dict]) -> None:
        self.doc["rows"].extend(rows)
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.doc[key] = value
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        from radar_train.outputs import write_text_atomic

        write_text_atomic(self.path, json.dumps(self.doc, indent=2, default=str) + "\n")
