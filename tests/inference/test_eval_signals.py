"""radar-eval and radar-train export under SIGTERM / Ctrl-C: stopped while they work, one line saying nothing was
written (SIGTERM killed them without a line); once their outputs go into place, a signal leaves them finished
(status 0), where it ended them with 143 or 130, their outputs in place."""
from __future__ import annotations

import json
import signal

import pytest

from cli_checks import call_cli, signal_self

pytestmark = pytest.mark.usefixtures("one_thread")


def test_radar_eval_stopped_while_it_measures_and_signalled_while_it_writes(trained_run, tmp_path, monkeypatch,
                                                                           noted):
    import radar_train.inference.evaluate as evaluate

    args = ["--cache", str(trained_run["cache"]), "--adapter", str(trained_run["adapter"]), "--device", "cpu"]
    real_eval, real_write = evaluate.evaluate_restoration, evaluate.write_report

    def stopped(*a, **k):
        signal_self(signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the measurement")

    monkeypatch.setattr(evaluate, "evaluate_restoration", stopped)
    code, err = call_cli("eval", [*args, "--output", str(tmp_path / "a")], tmp_path)
    assert (code, err.strip().splitlines()[-1]) == (143, "radar-eval: stopped by SIGTERM; nothing was written"), err
    assert not (tmp_path / "a").exists()

    def signalled_while_writing(*a, **k):
        signal_self(signal.SIGTERM, signal.SIGINT)
        return real_write(*a, **k)

    monkeypatch.setattr(evaluate, "evaluate_restoration", real_eval)
    monkeypatch.setattr(evaluate, "write_report", signalled_while_writing)
    code, err = call_cli("eval", [*args, "--output", str(tmp_path / "b")], tmp_path)
    assert code == 0 and noted == [], err
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["num_pairs"] == 16


def test_radar_train_export_stopped_while_it_works_says_nothing_was_written(trained_run, tmp_path, monkeypatch):
    import radar_train.train.module as module

    def stopped(*a, **k):
        signal_self(signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the export")

    monkeypatch.setattr(module, "module_from_hparams", stopped)
    ckpt = trained_run["run"] / "checkpoints" / "last.ckpt"
    code, err = call_cli("train", ["export", "--ckpt", str(ckpt), "--output", "ad"], tmp_path)
    assert (code, err.strip().splitlines()[-1]) == (143, "radar-train export: stopped by SIGTERM; nothing was "
                                                         "written"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
