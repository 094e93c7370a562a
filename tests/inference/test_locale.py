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


def _runs(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """`python -m` each command in the ASCII locale, all at once (independent: the suite's time); their results."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_CTYPE")}
    procs = []
    try:
        for args in commands:
            procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env={**env, **ASCII}))
        outputs = [p.communicate(timeout=300) for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_reports_and_help_in_an_ascii_locale(trained_run, tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"], capture_output=True,
                       env={**{k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}, **ASCII})
    assert r.stdout.decode().strip().lower() in ("ascii", "ansi_x3.4-1968"), r.stdout  # the setting is in force
    out = tmp_path / "\u00e9t\u00e9 eval"
    *helps, printed, r = _runs(
        ("radar_train.cli.generate", "--help"), ("radar_train.cli.fid", "--help"),
        ("radar_train.cli.generate", "--config", str(ROOT / "configs/generate/d16_stagevar.yaml"), "--print_config"),
        ("radar_train.cli.eval", "--cache", str(trained_run["cache"]), "--adapter", str(trained_run["adapter"]),
         "--output", str(out), "--device", "cpu"))
    for h in helps:
        assert h.returncode == 0 and b"usage" in h.stdout.lower(), h.stderr[-2000:]
    assert printed.returncode == 0 and "stagevar" in printed.stdout.decode(), printed.stderr[-2000:]  # (an α in it)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "eval.md").read_bytes().decode("utf-8")
    assert "\u2212" in md or "\u0394" in md  # (the characters the locale lacks, written as UTF-8)
