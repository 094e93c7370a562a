"""radar-bench accel / pipeline / cache / train under SIGTERM and Ctrl-C, and their --json file: stopped while they
measure, one line saying nothing was written (SIGTERM ended them without a line, their temporary files left); a
--json file that appeared while they measured is not replaced without --overwrite; Ctrl-C in radar-bench train's
Lightning loop is Ctrl-C (Lightning turned it into status 1, its line muted)."""
from __future__ import annotations

import signal

import pytest

from cli_checks import call_cli, signal_self

PIPELINE = ["pipeline", "--setup.preset", "tiny", "--setup.batch_size", "2", "--setup.repeats", "1",
            "--setup.device", "cpu", "--methods", "[none]"]


def test_a_benchmark_stopped_while_it_measures_says_nothing_was_written(tmp_path, monkeypatch, noted):
    import radar_train.bench.pipeline as pipeline

    def stopped(*a, **k):
        signal_self()
        pytest.fail("SIGTERM did not stop the benchmark")

    monkeypatch.setattr(pipeline, "run_pipeline_benchmark", stopped)
    code, err = call_cli("bench", [*PIPELINE, "--json", "out.json"], tmp_path)
    assert (code, err.strip().splitlines()[-1]) == (143, "radar-bench pipeline: stopped by SIGTERM; nothing was "
                                                         "written"), err
    assert list(tmp_path.iterdir()) == [] and noted == []


def test_a_json_file_that_appeared_while_it_measured_is_not_replaced(tmp_path, monkeypatch):
    import radar_train.bench.pipeline as pipeline

    real = pipeline.run_pipeline_benchmark

    def another_run_writes_first(*a, **k):
        rows = real(*a, **k)
        (tmp_path / "out.json").write_text("theirs\n")
        return rows

    monkeypatch.setattr(pipeline, "run_pipeline_benchmark", another_run_writes_first)
    code, err = call_cli("bench", [*PIPELINE, "--json", "out.json"], tmp_path)
    assert code == 2 and "--json out.json appeared while this run ran" in err.strip().splitlines()[-1], err
    assert (tmp_path / "out.json").read_text() == "theirs\n"


def test_ctrl_c_in_the_lightning_loop_is_an_interrupt(monkeypatch):
    """Lightning's own Ctrl-C handling ends with sys.exit(1): the benchmark raised SystemExit(1) from it."""
    import torch

    from radar_train.train import bench

    real_module = bench._module

    def module(args):
        m = real_module(args)

        def step(batch, batch_idx):
            raise KeyboardInterrupt

        m.training_step = step
        return m

    monkeypatch.setattr(bench, "_module", module)
    args = bench.TrainBenchArgs(preset="tiny", batch_size=2, steps=1, warmup=0, device="cpu")
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            bench.lightning_loop(args, torch.device("cpu"), "32-true")
    finally:
        signal.signal(signal.SIGINT, before)  # (Lightning set Ctrl-C to be ignored)


def test_radar_accel_calibrate_stopped_while_it_measures_says_nothing_was_written(tmp_path, monkeypatch, noted):
    from radar_train.accel import calibrate

    def stopped(*a, **k):
        signal_self()
        pytest.fail("SIGTERM did not stop the calibration")

    monkeypatch.setattr(calibrate, "calibrate_ranks", stopped)
    code, err = call_cli("accel", ["calibrate", "--model.preset", "tiny", "--num_samples", "2", "--device", "cpu",
                                   "--output", "ranks.yaml"], tmp_path)
    assert (code, err.strip().splitlines()[-1]) == (143, "radar-accel calibrate: stopped by SIGTERM; nothing was "
                                                         "written"), err
    assert list(tmp_path.iterdir()) == [] and noted == []
