"""benchmarks/run_gpu_suite.sh: the GPU run's one command, smoke-run on the CPU (the CUDA tests skip)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run_gpu_suite.sh"


def _run(tmp_path, *args, wheels=None):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "WHEELS": str(wheels or tmp_path / "no-wheels")}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_run_writes_result_and_logs_into_out(tmp_path):
    p = _run(tmp_path, "abc1234", "--device", "cpu", "--presets", "tiny", "--sections", "accel",
             "--methods", "stagevar:default", "--batch_size", "1", "--repeats", "1", "--min_repeats", "1",
             "--warmup", "0")
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


def test_usage_and_broken_wheels_are_one_line(tmp_path):
    p = _run(tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "usage: bash benchmarks/run_gpu_suite.sh COMMIT [gpu_suite options]"
    p = _run(tmp_path, "--device", "cpu")
    assert p.returncode == 2 and p.stderr.startswith("usage:")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    p = _run(tmp_path, "abc1234", "--device", "cpu", wheels=wheels)
    out = tmp_path / "out"
    assert p.returncode == 2 and p.stderr == f"error: {wheels}: the wheels did not install (see {out}/pip.log)\n"
    assert "broken" in (out / "pip.log").read_text()
    assert not list((tmp_path / "out").glob("*.json"))


def test_wheels_for_another_python_are_left_out_with_a_warning(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "numcodecs-0.16.6-cp27-cp27-manylinux2014_x86_64.whl").write_bytes(b"not for this Python")
    p = _run(tmp_path, "abc1234", "--device", "cpu", "--presets", "tiny", "--sections", "accel", "--methods", "stagevar:default",
             "--batch_size", "1", "--repeats", "1", "--min_repeats", "1", "--warmup", "0", wheels=wheels)
    assert "holds wheels for another Python than cp" in p.stderr and "suite exit 0" in p.stdout, p.stderr[-2000:]
    assert not (tmp_path / "out" / "pip.log").exists()
