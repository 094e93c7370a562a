"""A cluster shell whose locale's codec is not UTF-8 (here ASCII: LANG=C with Python's UTF-8 mode and locale
coercion off, as a Latin-1 locale behaves): the commands run in Python's UTF-8 mode (they re-execute themselves
in it), so config files, reports and non-ASCII paths are UTF-8 whatever the locale. Before, radar-eval measured
every pair and then ended in one error line (`'ascii' codec can't encode character '\u2212'`) with nothing
written, `--help` of five commands failed, and a shipped config with an α in a comment could not be read."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASCII = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_CTYPE")}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, env={**env, **ASCII}, timeout=300)


def test_reports_and_help_in_an_ascii_locale(trained_run, tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"], capture_output=True,
                       env={**{k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}, **ASCII})
    assert r.stdout.decode().strip().lower() in ("ascii", "ansi_x3.4-1968"), r.stdout  # the setting is in force
    for module in ("radar_train.cli.generate", "radar_train.cli.fid"):
        r = _run(module, "--help")
        assert r.returncode == 0 and b"usage" in r.stdout.lower(), r.stderr[-2000:]
    r = _run("radar_train.cli.generate", "--config", str(ROOT / "configs/generate/d16_stagevar.yaml"), "--print_config")
    assert r.returncode == 0 and "stagevar" in r.stdout.decode(), r.stderr[-2000:]  # (its comments have an α)
    out = tmp_path / "\u00e9t\u00e9 eval"
    r = _run("radar_train.cli.eval", "--cache", str(trained_run["cache"]), "--adapter", str(trained_run["adapter"]),
             "--output", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "eval.md").read_bytes().decode("utf-8")
    assert "\u2212" in md or "\u0394" in md  # (the characters the locale lacks, written as UTF-8)
