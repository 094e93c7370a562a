"""The `sacct -o FIELD,...` commands in the SLURM docs name fields that sacct has (there is no `Restarts`: the
requeue count is `Restarts=N` in `scontrol show job`). The field list comes from `sacct --helpformat` when it
answers (it needs a cluster), else from the "Job Accounting Fields" section of `man sacct`; without either the
test skips."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ("slurm/README.md", "README.md", "slurm/pipeline.sh")
FORMAT = re.compile(r"\bsacct\b[^\n`]*?(?:\s-o\s*|\s--format[= ])([\w,%.]+)")


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={"MANPAGER": "cat", "PATH":
                              "/usr/local/bin:/usr/bin:/bin"}).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def sacct_fields() -> set[str]:
    """The field names sacct knows, lower case (sacct takes them in any case); empty when neither source answers."""
    if shutil.which("sacct"):
        fields = set(_run("sacct", "--helpformat").split())
        if fields:
            return {f.lower() for f in fields}
    section = re.search(r"^ +Job Accounting Fields\n(.*?)^\S", _run("man", "-P", "cat", "sacct"), re.M | re.S)
    return {f.lower() for f in re.findall(r"^ {14}([A-Z][A-Za-z]+)", section[1], re.M)} if section else set()


def documented_fields() -> list[tuple[str, str]]:
    """(file, field) for every field of every `sacct -o` / `--format` in the docs."""
    return [(doc, field.split("%")[0]) for doc in DOCS for m in FORMAT.finditer((REPO / doc).read_text())
            for field in m[1].split(",") if field]


def test_docs_name_only_fields_sacct_has():
    known = sacct_fields()
    if not known:
        pytest.skip("neither `sacct --helpformat` nor `man sacct` lists sacct's fields here")
    documented = documented_fields()
    assert any(doc == "slurm/README.md" for doc, _ in documented), "no `sacct -o` found in slurm/README.md"
    assert [(doc, f) for doc, f in documented if f.lower() not in known] == []
