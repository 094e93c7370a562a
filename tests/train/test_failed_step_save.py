"""A training step that raises (CUDA out of memory, an unreadable shard) saves the step before it when its optimizer
update had not begun, and the run resumed from that checkpoint ends bit-identical to an uninterrupted one; a step
that fails after its update began, or in a validation, saves nothing. Before, every failure lost the steps since
the run's last periodic checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from tiny_training import run_train_cli, tiny_fit_argv, train_main

STEPS = 6


def _argv(cache: str, root, *extra: str) -> list[str]:
    # LoRA dropout: the step's random stream must be saved as of the step before; gradient accumulation: the
    # failure comes after a micro-batch's gradient was accumulated and its batches fetched; a weight average (which
    # validations swap into the module): the checkpoint holds it beside the weights as trained
    return tiny_fit_argv(cache, root, STEPS, "--model.output.save_every_n_steps", "1000", "--model.lora.dropout",
                         "0.1", "--trainer.accumulate_grad_batches", "2", "--trainer.logger", "false",
                         "--model.ema.decay", "0.5", *extra)


def _fail(cache: str, root, step: int, where: str, *extra: str, val_batch: int = 0, argv=_argv,
          callbacks=()) -> RuntimeError:
    cb = [{"class_path": "tiny_training.FailAt",
           "init_args": {"step": step, "where": where, "micro_batch": 2, "val_batch": val_batch}}, *callbacks]
    with pytest.raises(RuntimeError, match="injected failure") as e:
        train_main(argv(cache, root, "--trainer.callbacks", json.dumps(cb), *extra))
    return e.value


def _last(root) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _run_checkpoint_state(checkpoint: dict) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("RunCheckpoint")]
    return state


def _adapter(root) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / "final" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_a_step_that_raises_saves_the_step_before_it_and_the_run_resumes_exactly(tiny_cache, tmp_path):
    full, failed = tmp_path / "full", tmp_path / "failed"
    assert run_train_cli(_argv(tiny_cache, full)) == 0

    # step 4 fails after the backward of its second micro-batch (no checkpoint was due before): step 3 is saved
    e = _fail(tiny_cache, failed, 4, "backward")
    assert e.__notes__ == ["radar-train: the run failed in the step after step 3, which is saved (once the cause is "
                           "fixed, resume with --ckpt_path last)"]
    assert sorted(p.name for p in (failed / "checkpoints").iterdir()) == ["last.ckpt", "step-000003.ckpt"]
    saved = _last(failed)
    assert saved["global_step"] == 3 and saved["radar_rng"]["count"].item() == 6  # 3 steps of 2 micro-batches
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 6

    # resumed, it fails in the validation at step 4 (after step 4's update, the average swapped in): step 4 is saved,
    # with the weights as trained and that validation owed
    e = _fail(tiny_cache, failed, 4, "validation", "--ckpt_path", "last")
    assert e.__notes__ == ["radar-train: the run failed in the validation at step 4; the step is saved (once the "
                           "cause is fixed, resume with --ckpt_path last: the validation runs again first)"]
    saved = _last(failed)
    assert saved["global_step"] == 4 and _run_checkpoint_state(saved)["validation_owed"] == 4
    assert sorted(p.name for p in (failed / "checkpoints").iterdir()) == ["last.ckpt", "step-000004.ckpt"]

    # resumed again, to the end: the adapter of the uninterrupted run
    assert run_train_cli(_argv(tiny_cache, failed, "--ckpt_path", "last")) == 0
    a, b = _adapter(full), _adapter(failed)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)


def _validated_argv(cache: str, root, *extra: str) -> list[str]:
    # a validation and a save every 2 steps; early stopping (which never stops here) and the best step's file: the
    # callbacks whose state a validation changes; a weight average, which validations swap into the module
    # (and a step export every 2 steps, whose metrics are those of the validation at its step)
    return tiny_fit_argv(cache, root, STEPS, "--trainer.logger", "false", "--model.ema.decay", "0.5",
                         "--model.early_stopping.enabled", "true", "--model.early_stopping.patience", "10",
                         "--model.output.export_every_n_steps", "2", *extra)


def _steps_validated(root) -> list:
    return [int(line) if line.isdigit() else line for line in (root / "validations.txt").read_text().splitlines()]


def _callback_states(root) -> dict:
    """last.ckpt's callback states, the checkpoint files named by their file name (the run folders differ)."""
    def names(value):
        if isinstance(value, dict):
            return {names(k): names(v) for k, v in value.items()}
        return value.rsplit("/", 1)[-1] if isinstance(value, str) and str(root) in value else value

    return names(_last(root)["callbacks"])


def _count(root) -> list[dict]:
    return [{"class_path": "tiny_training.ValidationSteps", "init_args": {"path": str(root / "validations.txt")}}]


@pytest.fixture(scope="module")
def validated_full(tiny_cache, tmp_path_factory):
    """The uninterrupted run the validation failures are compared with."""
    full = tmp_path_factory.mktemp("validated") / "full"
    full.mkdir()
    assert run_train_cli(_validated_argv(tiny_cache, full, "--trainer.callbacks", json.dumps(_count(full)))) == 0
    return full


def _export_metrics(root) -> dict:
    import yaml

    return {p.name: yaml.safe_load((p / "radar_config.yaml").read_text())["metrics"]
            for p in sorted(root.glob("step-*")) if p.is_dir()}


def _same_run(full, failed) -> None:
    assert _steps_validated(full) == [2, 4, 6] and _steps_validated(failed) == [2, 4, 6]
    metrics = _export_metrics(full)
    assert list(metrics) == ["step-000002", "step-000004", "step-000006"] and _export_metrics(failed) == metrics
    assert _callback_states(failed) == _callback_states(full)  # early stopping's count, the best step's file
    assert sorted(p.name for p in (failed / "checkpoints").iterdir()) == \
        sorted(p.name for p in (full / "checkpoints").iterdir())
    a, b = _adapter(full), _adapter(failed)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_validation_that_raises_saves_its_step_and_the_resumed_run_validates_it_again(tiny_cache, validated_full,
                                                                                       tmp_path):
    full, failed, count = validated_full, tmp_path / "failed", _count
    failed.mkdir()
    # the second batch of the validation at step 4 fails (its first batch validated, the average swapped in; with a
    # time limit, whose Timer callback's state changes all the time)
    e = _fail(tiny_cache, failed, 4, "validation", "--trainer.max_time", "00:01:00:00", val_batch=1,
              argv=_validated_argv, callbacks=count(failed))
    assert e.__notes__ == ["radar-train: the run failed in the validation at step 4; the step is saved (once the "
                           "cause is fixed, resume with --ckpt_path last: the validation runs again first)"]
    saved = _last(failed)
    assert saved["global_step"] == 4 and _run_checkpoint_state(saved)["validation_owed"] == 4
    assert _steps_validated(failed) == [2]

    # resumed, the validation at step 4 runs first and step 4 is saved again after it; step 5 then fails after its
    # update (nothing saved): the validated step 4 is the last checkpoint
    e = _fail(tiny_cache, failed, 5, "end", "--ckpt_path", "last", argv=_validated_argv, callbacks=count(failed))
    saved = _last(failed)
    assert saved["global_step"] == 4 and "validation_owed" not in _run_checkpoint_state(saved)
    assert _steps_validated(failed) == [2, 4]

    # resumed again, training goes on as in the uninterrupted run
    assert run_train_cli(_validated_argv(tiny_cache, failed, "--trainer.callbacks", json.dumps(count(failed)),
                                         "--ckpt_path", "last")) == 0
    _same_run(full, failed)


@pytest.mark.slow
def test_a_validation_that_raises_at_the_last_step_runs_again_before_the_resumed_run_ends(tiny_cache, validated_full,
                                                                                          tmp_path, monkeypatch):
    """(Lightning's fit loop ends at max_steps before its epoch loop could run the validation again; it runs before
    the strategy's teardown, which on a GPU puts the model on the CPU.)"""
    from lightning.pytorch.strategies import Strategy

    teardown = Strategy.teardown

    def marked(self):
        self.torn_down = True
        teardown(self)

    monkeypatch.setattr(Strategy, "teardown", marked)
    failed = tmp_path / "failed"
    failed.mkdir()
    e = _fail(tiny_cache, failed, STEPS, "validation", argv=_validated_argv, callbacks=_count(failed))
    assert e.__notes__[0].startswith(f"radar-train: the run failed in the validation at step {STEPS}; the step is saved")
    assert _steps_validated(failed) == [2, 4] and not (failed / "final").exists()
    assert run_train_cli(_validated_argv(tiny_cache, failed, "--trainer.callbacks", json.dumps(_count(failed)),
                                         "--ckpt_path", "last")) == 0
    assert "validation_owed" not in _run_checkpoint_state(_last(failed))
    _same_run(validated_full, failed)


def test_a_validation_failure_after_early_stopping_took_its_results_saves_nothing(tiny_cache, tmp_path, monkeypatch):
    """The best step's save (after early stopping's, before the run's) fails in the first validation: early stopping
    has counted it, and a resume would count it again, so nothing is saved and the note says why."""
    from radar_train.train.selection import BestCheckpoint

    def disk_full(self, trainer, filepath):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(BestCheckpoint, "_save_checkpoint", disk_full)
    with pytest.raises(RuntimeError, match="injected failure") as e:
        train_main(_validated_argv(tiny_cache, tmp_path / "run"))
    assert e.value.__notes__ == ["radar-train: the run failed; nothing saved since its last checkpoint (the "
                                 "validation at step 2 failed after a callback had taken its results (early "
                                 "stopping, the best step): running it again would count it twice)"]
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_failure_in_the_first_step_or_at_a_steps_end_saves_nothing(tiny_cache, tmp_path):
    e = _fail(tiny_cache, tmp_path / "first", 1, "update")
    assert e.__notes__[-1].endswith("(no training step had ended in this run)")
    assert not (tmp_path / "first" / "checkpoints").exists() or not any((tmp_path / "first" / "checkpoints").iterdir())
    e = _fail(tiny_cache, tmp_path / "end", 1, "end")
    assert e.__notes__[-1].endswith("(the failure came after an optimizer update began)")


def _ddp_run(cache: str, run, fail_at: dict, *extra: str):
    """radar-train fit of 3 steps on 2 CPU processes (DDP) with tiny_training.FailAt(**fail_at): the process, which
    is to fail."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    args = tiny_fit_argv(cache, run, 3, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                         "--trainer.strategy", "ddp", "--model.output.save_every_n_steps", "1000",
                         "--trainer.logger", "false", *extra)
    cb = [{"class_path": "tiny_training.FailAt", "init_args": fail_at}]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run([sys.executable, "-m", "radar_train.cli.train", *args, "--trainer.callbacks", json.dumps(cb)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "RuntimeError: injected failure" in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_under_ddp_rank_0_saves_the_step_before_its_failed_step_without_the_other_rank(tiny_cache, tmp_path):
    """Rank 0 fails after the backward of step 2, rank 1 waits for it in the step's end: rank 0 saves step 1 on its
    own (a save's collectives would wait for rank 1 forever), and the run ends (rank 1 with the lost peer's error)."""
    proc = _ddp_run(tiny_cache, tmp_path / "ddp", {"step": 2, "where": "backward", "rank": 0})
    assert "radar-train: the run failed in the step after step 1, which is saved" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("radar-train: the run failed") == 1  # rank 0's line only (rank 1 lost its peer)
    # rank 1's end: one line, not a traceback of the collective it waited in (gloo's "Connection closed by peer")
    assert proc.stderr.count("Traceback") == 1, proc.stderr[-3000:]  # (rank 0's injected failure's)
    assert proc.stderr.count("error: radar-train fit: another process of the run ended (it failed, was killed or "
                             "ran out of memory) and this one lost its connection to it (gloo: ") == 1, \
        proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["last.ckpt", "step-000001.ckpt"]
    last = _last(tmp_path / "ddp")
    assert last["global_step"] == 1 and last["radar"]["training"]["trainer"]["world_size"] == 2


@pytest.mark.slow
def test_under_ddp_a_validation_that_raises_on_rank_1_has_rank_0_save_its_step_with_the_validation_owed(tiny_cache,
                                                                                                     tmp_path):
    """Rank 1 fails in the validation at step 2; rank 0 finishes its batches and waits for rank 1 in the
    validation's reduction, which fails once rank 1 is gone: rank 0 saves step 2 on its own, with the validation
    owed (and only it says so)."""
    run = tmp_path / "ddp"
    proc = _ddp_run(tiny_cache, run, {"step": 2, "where": "validation", "rank": 1}, "--model.ema.decay", "0.5")
    assert "radar-train: the run failed in the validation at step 2; the step is saved" in proc.stderr, \
        proc.stderr[-3000:]
    assert proc.stderr.count("radar-train: the run failed") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-000002.ckpt"]
    last = _last(run)
    assert last["global_step"] == 2 and _run_checkpoint_state(last)["validation_owed"] == 2
    assert last["radar"]["training"]["trainer"]["world_size"] == 2


def test_local_collectives_act_on_this_process_alone_and_are_put_back():
    from radar_train.train.step_boundary import local_collectives

    class Strategy:
        world_size = 2

        def barrier(self, name=None):
            raise AssertionError("a collective")

        broadcast = reduce_boolean_decision = reduce = barrier

    s = Strategy()
    s.reduce = lambda *a, **k: "own"  # an instance attribute of its own: restored as it was
    with local_collectives(s):
        assert s.barrier("x") is None and s.broadcast({"a": 1}, src=0) == {"a": 1}
        assert s.reduce_boolean_decision(1, all=False) is True and s.reduce(3) == 3
    assert s.reduce() == "own" and "barrier" not in vars(s) and "broadcast" not in vars(s)
    with pytest.raises(AssertionError, match="a collective"):
        s.barrier()


def test_callback_states_compare_by_value_with_an_unset_nan_score_equal_to_itself():
    from radar_train.train.step_boundary import _same

    nan = float("nan")
    state = {"wait_count": 0, "best_score": torch.tensor(nan), "kept": ["a.ckpt"], "score": nan}
    assert _same(state, {**state, "best_score": torch.tensor(nan)})
    assert not _same(state, {**state, "best_score": torch.tensor(1.0)})
    assert not _same(state, {**state, "wait_count": 1}) and not _same(state, {**state, "kept": ("a.ckpt",)})
    assert not _same(torch.tensor([1.0, nan]), torch.tensor([2.0, nan])) and not _same(state, {**state, "new": 1})


def test_a_validation_every_so_many_seconds_that_raises_saves_nothing(tiny_cache, tmp_path):
    """A time-based val_check_interval: a resumed run would not run that validation again (its clock starts anew),
    so its failure is not saved with the validation owed."""
    every = ("--trainer.val_check_interval", "00:00:00:00", "--trainer.check_val_every_n_epoch", "null")
    e = _fail(tiny_cache, tmp_path / "run", 2, "validation", *every, argv=_validated_argv)
    assert e.__notes__ == ["radar-train: the run failed; nothing saved since its last checkpoint (the failure came "
                           "after an optimizer update began)"]
    # (and such a run, with early stopping, runs: Lightning's EarlyStopping read trainer.val_check_interval, which a
    # time does not set, as did radar-train's checks and the adapter's record)
    import yaml

    assert run_train_cli(_validated_argv(tiny_cache, tmp_path / "whole", *every, "--trainer.max_steps", "2")) == 0
    meta = yaml.safe_load((tmp_path / "whole" / "final" / "radar_config.yaml").read_text())
    assert meta["training"]["trainer"]["val_check_interval"] == "0 s"


def test_an_owed_validation_the_resumed_loop_does_not_run_is_said(tiny_cache, tmp_path, caplog):
    """Resumed with another val_check_interval, the owed validation is not due at its step: training goes on, the
    line says so, and the validation loop's counters are put back (later saves are not taken for ones made in a
    validation)."""
    import logging

    run = tmp_path / "run"
    run.mkdir()
    _fail(tiny_cache, run, 4, "validation", argv=_validated_argv, callbacks=_count(run))
    with caplog.at_level(logging.WARNING, logger="radar_train"):
        assert run_train_cli(_validated_argv(tiny_cache, run, "--trainer.callbacks", json.dumps(_count(run)),
                                             "--trainer.val_check_interval", "3", "--ckpt_path", "last")) == 0
    assert "the validation of step 4, which the checkpoint owed, did not run again on resume" in caplog.text
    assert _steps_validated(run) == [2, 6]
    progress = _last(run)["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]
    assert progress["ready"] == progress["started"] == progress["processed"] == progress["completed"]


STEP_ADVICE = ("a training step keeps the activations of --data.batch_size pairs for the backward. The same update "
               "in less memory: fewer pairs per pass, --data.batch_size M --trainer.accumulate_grad_batches K (M x K "
               "pairs per optimizer step, their gradients summed; --trainer.val_check_interval counts micro-batches), "
               "and/or --model.optim.activation_checkpointing blocks (docs/training.md#memory)")
VALIDATION_ADVICE = "a validation decodes --data.val_batch_size pairs at once (default: --data.batch_size): lower it"


@pytest.mark.parametrize("where,advice", [
    ("backward", f"radar-train: out of memory in a training step: {STEP_ADVICE}"),
    ("validation", f"radar-train: out of memory in a validation: {VALIDATION_ADVICE}")])
def test_a_fit_out_of_memory_says_what_lowers_the_memory_after_what_it_saved(tiny_cache, tmp_path, where, advice,
                                                                           capsys):
    """CUDA's allocator raises torch.OutOfMemoryError: one error line (a traceback before), then the line on what was
    saved, then one on the options that lower the memory of what failed (a step: micro-batches and activation
    checkpointing; a validation: its batch); status 1."""
    cb = [{"class_path": "tiny_training.FailAt", "init_args": {"step": 2, "where": where, "micro_batch": 2,
                                                             "out_of_memory": True}}]
    with pytest.raises(SystemExit) as e:
        train_main(_argv(tiny_cache, tmp_path / "run", "--trainer.callbacks", json.dumps(cb)))
    assert e.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert "Traceback" not in "\n".join(err)
    assert err[-3] == "error: radar-train fit: out of memory (injected failure)", err[-5:]
    assert err[-1] == advice
    assert err[-2].startswith("radar-train: the run failed in the " + (
        "step after step 1" if where == "backward" else "validation at step 2"))


def test_other_failures_get_no_memory_advice_and_one_outside_the_steps_gets_both(monkeypatch):
    from radar_train.cli.train import memory_note
    from radar_train.train import run_checkpoint

    assert memory_note(RuntimeError("injected failure")) is None and memory_note(ValueError("x")) is None
    monkeypatch.setattr(run_checkpoint, "last_failure", {})  # (an error before the fit's first step, say)
    assert memory_note(torch.OutOfMemoryError("x")) == (f"radar-train: out of memory: {VALIDATION_ADVICE}; "
                                                        f"{STEP_ADVICE}")


@pytest.mark.parametrize("error,said", [
    (RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                  "[127.0.0.1]:36058. This is typically caused by a remote worker crashing. Check the logs of the "
                  "remote worker before reporting an error. GLHF!"),
     "gloo: Connection closed by peer [127.0.0.1]:36058"),
    ("DistBackendError", "NCCL: NCCL communicator was aborted on rank 1"),
])
def test_a_process_whose_collective_lost_its_peer_ends_in_one_line_with_status_1(error, said, capsys):
    """The error gloo / NCCL raise in a rank whose other process failed, was killed or ran out of memory: a
    traceback of the collective it waited in, printed after (or instead of) the failed rank's own line."""
    import torch.distributed as dist

    from radar_train.cli.common import run_main

    if error == "DistBackendError":
        error = dist.DistBackendError("NCCL communicator was aborted on rank 1. Original reason for failure was: ...")
    error.add_note("radar-train: the run failed in the step after step 4, which is saved")

    def body(_args):
        raise error

    with pytest.raises(SystemExit) as e:
        run_main("radar-train fit", body, [], check_configs=False)
    assert e.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: radar-train fit: another process of the run ended (it failed, was killed or ran out of memory) and "
        f"this one lost its connection to it ({said}): that process's own error, where it had time to print one, "
        f"says why", "radar-train: the run failed in the step after step 4, which is saved"]


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)"),
                                   RuntimeError("Connection closed by peer"),  # (not a collective's)
                                   "DistNetworkError"])
def test_other_runtime_errors_keep_their_traceback(error):
    import torch.distributed as dist

    from radar_train.cli.common import run_main

    if error == "DistNetworkError":  # (a rendezvous that failed: not a peer gone)
        error = dist.DistNetworkError("The server socket has failed to listen on any local network address.")

    def body(_args):
        raise error

    with pytest.raises(type(error)):
        run_main("radar-train fit", body, [], check_configs=False)


def test_a_failed_final_export_says_the_run_ended_saved_and_the_resume_it_advises_writes_final(tiny_cache, tmp_path,
                                                                                              monkeypatch, capsys):
    """A run continued from step 4 to step 6 trained to its end and saved it; then final/'s export failed (a full
    disk). The last line said the step after step 6 had failed, and the resume it advised ended at once, exit 0,
    keeping the final/ of step 4."""
    import errno

    from safetensors.torch import load_file

    from radar_train.export import adapter
    from radar_train.train.export import export_checkpoint

    root = tmp_path / "run"
    assert run_train_cli(tiny_fit_argv(tiny_cache, root, 4, "--trainer.logger", "false")) == 0
    real = adapter.save_adapter

    def full(model, out_dir, *args, **kwargs):
        if str(out_dir).endswith("final"):
            raise OSError(errno.ENOSPC, "No space left on device", str(out_dir))
        return real(model, out_dir, *args, **kwargs)

    monkeypatch.setattr(adapter, "save_adapter", full)
    argv = tiny_fit_argv(tiny_cache, root, 6, "--trainer.logger", "false", "--ckpt_path", "last")
    said = ("radar-train: the run trained to its end, step 6, which is saved; writing its final/ failed (once the "
            "cause is fixed, resume with --ckpt_path last: it writes final/ without training)")
    for _ in range(2):  # the run, then its resume with the disk still full
        capsys.readouterr()
        assert run_train_cli(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-2:] == [f"error: radar-train fit: {root / 'final'}: No space left on device (errno 28)", said]
        assert _last(root)["global_step"] == 6 and adapter.run_step_of(root / "final") == 4

    monkeypatch.undo()
    assert run_train_cli(argv) == 0
    assert adapter.run_step_of(root / "final") == 6
    export_checkpoint(root / "checkpoints" / "last.ckpt", tmp_path / "of_last")
    want, got = load_file(str(tmp_path / "of_last" / "adapter_model.safetensors")), _adapter(root)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
