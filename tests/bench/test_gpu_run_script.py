"""benchmarks/run_gpu_suite.sh: the GPU run's one command, smoke-run on the CPU (the CUDA tests skip)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run_gpu_suite.sh"


QUICK = ["--device", "cpu", "--presets", "tiny", "--sections", "accel", "--methods", "stagevar:default",
         "--batch_size", "1", "--repeats", "1", "--min_repeats", "1", "--warmup", "0"]
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def _run(tmp_path, *args, wheels=None, **env):
    """The script with this Python, its output in tmp_path/out; without official code or wheels unless given
    (NO_OFFICIAL / NO_WHEELS: a checkout has no .official_var or .whl unless prepare_gpu_run.sh made them)."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "OFFICIAL_VAR": str(tmp_path / "none"),
           "WHEELS": str(wheels or tmp_path / "no-wheels"), "NO_OFFICIAL": "1", "NO_WHEELS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_run_writes_result_and_logs_into_out(tmp_path):
    # (PYTEST_ADDOPTS: a GPU image without pytest-xdist, which pyproject.toml's addopts use)
    p = _run(tmp_path, "abc1234", *QUICK, PYTEST_ADDOPTS="-p no:xdist")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = tmp_path / "out"
    results = list(out.glob("*.json"))
    assert len(results) == 1 and results[0].name.endswith(".json")
    doc = json.loads(results[0].read_text())
    assert doc["commit"] == "abc1234" and doc["status"]["accel"].startswith("ok")
    assert doc["command"].startswith("bash benchmarks/run_gpu_suite.sh abc1234 --device cpu --presets tiny")
    assert str(out) not in doc["command"]  # the machine's folders stay out of the docs
    assert "stagevar:default" in {r["method"] for r in doc["rows"]}
    assert "wrote" in (out / "suite.log").read_text()
    tests_log = (out / "gpu-tests.log").read_text()
    assert " failed" not in tests_log and (" skipped" if not torch.cuda.is_available() else " passed") in tests_log
    assert "suite exit 0, tests exit 0" in p.stdout
    if not torch.cuda.is_available():  # the probes ran after the tests, into one log (on a CPU they measure nothing)
        assert (out / "probes.log").read_text() == "".join(f"gpu_probes.py {name}: needs a CUDA device; nothing measured\n"
                                                           for name in ("bicubic", "fused", "decode"))
        # a lent GPU machine returns at most eight files from a command: the run writes these (nvidia-smi.txt and
        # pip.log besides, where there is nvidia-smi and a wheel to install; probes.json where a probe measured)
        assert sorted(f.name for f in out.iterdir()) == sorted([results[0].name, "suite.log", "gpu-tests.log",
                                                                "probes.log"])


def test_usage_is_one_line(tmp_path):
    p = _run(tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == ("usage: [PART=all|main|diagnostics] bash benchmarks/run_gpu_suite.sh "
                                                      "COMMIT [gpu_suite options]")
    p = _run(tmp_path, "--device", "cpu")
    assert p.returncode == 2 and p.stderr.startswith("usage:")


def test_a_run_without_its_carried_folders_stops_at_once_writing_nothing(tmp_path):
    """A device run without .official_var or a wheel for the machine's Python would spend the whole device
    budget on a run without its main numbers: it stops in its first second instead (unless told to go on)."""
    p = _run(tmp_path, "abc1234", *QUICK, NO_OFFICIAL="0")
    assert p.returncode == 2 and p.stderr == (f"error: {tmp_path}/none/models/var.py not found: carry .official_var "
                                              f"(bash benchmarks/prepare_gpu_run.sh), or NO_OFFICIAL=1\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "numcodecs-0.16.6-cp27-cp27-manylinux2014_x86_64.whl").write_bytes(b"not for this Python")
    p = _run(tmp_path, "abc1234", *QUICK, wheels=wheels, NO_WHEELS="0")
    assert p.returncode == 2 and p.stderr.startswith(f"error: {wheels} holds no wheel for {TAG} ")
    assert f"PY_VERSION={sys.version_info[0]}.{sys.version_info[1]}" in p.stderr
    assert not (tmp_path / "out").exists()


def test_only_this_pythons_wheels_are_installed_and_a_failed_install_only_warns(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "numcodecs-0.16.6-cp27-cp27-manylinux2014_x86_64.whl").write_bytes(b"not for this Python")
    (wheels / f"broken-1.0-{TAG}-{TAG}-manylinux2014_x86_64.whl").write_bytes(b"not a zip")
    p = _run(tmp_path, "abc1234", *QUICK, wheels=wheels, NO_WHEELS="0", PROBES="")  # (no probes: not what this checks)
    out = tmp_path / "out"
    assert p.returncode == 0 and "suite exit 0" in p.stdout, p.stderr[-2000:]
    assert f"warning: {wheels}: the wheels did not install (see {out}/pip.log)" in p.stderr
    log = (out / "pip.log").read_text()
    assert "broken" in log and "numcodecs" not in log  # the other Python's wheel was left out
    assert len(list(out.glob("*.json"))) == 1


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the machine's Python: answers the wheel tag, records every other call (arguments and the probes'
# environment) and prints a line as the real call would
if [ "$1" = -c ]; then echo cp311; exit 0; fi
echo "$* | OUT=${OUT:-} PROBES_RUN=${PROBES_RUN:-}" >> "$CALLS"
echo "ran: $*"
"""


def _fake_run(tmp_path, part, earlier_probes_log=False):
    """The script with a stand-in Python; with `earlier_probes_log`, $OUT holds an earlier run's probes.log."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "out"
    if earlier_probes_log:
        out.mkdir()
        (out / "probes.log").write_text("an earlier run's probe\n")
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "OUT": str(out), "NO_OFFICIAL": "1",
           "NO_WHEELS": "1", "WHEELS": str(tmp_path / "no-wheels"), **({} if part is None else {"PART": part})}
    env.pop("PROBES", None)
    p = subprocess.run(["bash", str(SCRIPT), "abc1234", "--presets", "var-d16"], env=env, capture_output=True,
                       text=True, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return p, calls, out


@pytest.mark.parametrize("part, sections, budget, tests, probes", [
    (None, "accel,train,profile,sca", "380", True, ["bicubic", "fused", "decode"]),
    ("main", "accel,train", "300", True, []),
    ("diagnostics", "profile,sca", "200", False, ["bicubic", "fused", "decode"]),
])
def test_each_part_runs_its_sections_tests_and_probes(tmp_path, part, sections, budget, tests, probes):
    """PART splits the run into two device commands that fit a 15-minute device budget with a machine start (main:
    what the targets need; diagnostics: what explains them); unset, everything runs as one command."""
    p, calls, out = _fake_run(tmp_path, part, earlier_probes_log=True)
    assert p.returncode == 0, p.stderr
    suite = [c for c in calls if c.startswith("-m radar_train.bench.gpu_suite ")]
    assert len(suite) == 1
    prefix = "" if part is None else f"PART={part} "
    assert f" --sections {sections} --budget_s {budget} " in suite[0]
    assert f" --command {prefix}bash benchmarks/run_gpu_suite.sh abc1234 --presets var-d16 " in suite[0]
    assert suite[0].split(" | ")[0].endswith(" --presets var-d16")  # (the caller's options last: they override)
    assert any(c.startswith("-m pytest ") for c in calls) == tests
    assert (out / "gpu-tests.log").exists() == tests
    ran = [c for c in calls if c.startswith("benchmarks/gpu_probes.py ")]
    assert [c.split(" | ")[0].split()[1] for c in ran] == probes
    assert len({c.split("PROBES_RUN=")[1] for c in ran}) <= 1 and all(not c.endswith("PROBES_RUN=") for c in ran)
    log = (out / "probes.log").read_text()
    if probes:  # one log for every probe of this run, begun anew
        assert log.count("ran: benchmarks/gpu_probes.py") == len(probes) and "earlier" not in log
    else:  # no probes: an earlier run's log is left as it was
        assert log == "an earlier run's probe\n"


def test_a_part_that_does_not_exist_is_one_line_and_writes_nothing(tmp_path):
    p, calls, out = _fake_run(tmp_path, "everything")
    assert p.returncode == 2 and p.stderr == "error: PART=everything: one of all, main, diagnostics\n"
    assert calls == [] and not out.exists()
