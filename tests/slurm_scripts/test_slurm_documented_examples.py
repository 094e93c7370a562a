"""The `radar-cache run` overrides that the slurm/ script headers give as examples are accepted by the real
radar-cache with the shipped tiny config (every shipped cache config sets plan.images_per_class, so an example
that only sets plan.num_samples made every array task fail). The examples are read from the headers, so this test
follows the docs; only the sample count is made small."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

EXAMPLES = {  # script: (the header entry that gives the example, the pattern of the example in it)
    "cache.sbatch": ("OVERRIDE...", r"\be\.g\. (.+)$"),
    "pipeline.sh": ("CACHE_ARGS", r"\be\.g\. \"([^\"]+)\""),
}


def header_entry(script: str, name: str) -> str:
    """The entry NAME of the header of slurm/SCRIPT (`#   NAME  text`, continued on more indented `#` lines), one line."""
    lines = (REPO / "slurm" / script).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"#\s+{re.escape(name)}\s", line))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not re.match(r"#\s{6,}\S", line):
            break
        entry.append(line)
    return " ".join(line.lstrip("#").strip() for line in entry)


def documented_example(script: str) -> list[str]:
    """The example override words in the header of slurm/SCRIPT, its plan.num_samples made small (4)."""
    name, pattern = EXAMPLES[script]
    found = re.search(pattern, header_entry(script, name))
    assert found, f"no example in the {name} entry of the header of slurm/{script}"
    words = shlex.split(found[1])
    assert "--plan.num_samples" in words, words
    words[words.index("--plan.num_samples") + 1] = "4"
    return words


@pytest.mark.parametrize("script", EXAMPLES)
def test_documented_cache_override_is_accepted(script, tmp_path):
    example = documented_example(script)
    proc = subprocess.run([sys.executable, "-m", "radar_train.cli.cache", "run", "--config", "configs/cache/tiny.yaml",
                           "--output", str(tmp_path / "cache"), *example, "--progress", "false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{example}: {proc.stderr}"
    assert (tmp_path / "cache" / "manifest.json").is_file()
