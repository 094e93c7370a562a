"""The commands' SIGTERM handling (radar_train.cli.common): `sigterm_stops` raises Stopped once and ignores a
second SIGTERM while the command saves, and puts the handler before back; `signals_ignored_to_the_end` lets a
command finish moving its outputs into place and exit with its own status."""
from __future__ import annotations

import os
import signal

import pytest

from cli_checks import signal_self
from radar_train.cli.common import Stopped, run_main, signals_ignored_to_the_end, sigterm_stops


def test_sigterm_stops_raises_once_then_ignores_and_restores(noted):
    mine = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped):
        with sigterm_stops():
            os.kill(os.getpid(), signal.SIGTERM)  # (the handler runs as soon as os.kill returns)
            pytest.fail("SIGTERM did not stop the block")
    assert signal.getsignal(signal.SIGTERM) is mine and noted == []
    with pytest.raises(Stopped):
        with sigterm_stops():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10):
                    pass
            except Stopped:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one, while the command saves: ignored
                for _ in range(10):
                    pass
                raise
    assert noted == []


def test_a_process_forked_under_sigterm_stops_leaves_the_signal_to_the_command(noted):
    """A DataLoader worker forked during radar-train's set-up inherits the handler: a SIGTERM to the process group
    raised Stopped inside the worker too (its traceback among the command's lines)."""
    with sigterm_stops():
        child = os.fork()
        if child == 0:  # (the child only signals itself and exits: no torch, no pytest teardown)
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                os._exit(0)
            except BaseException:
                os._exit(3)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and noted == []


def test_after_hand_over_the_handler_does_nothing_and_the_one_before_is_back_where_it_was_still_ours(noted):
    """radar-train's set-up: at training's start the run's own handling takes the signals over. Lightning's SIGTERM
    handler, registered in between, calls the one it found (ours): from the hand-over that call does nothing."""
    with sigterm_stops() as handle:
        theirs = signal.signal(signal.SIGTERM, lambda signum, frame: (noted.append(-signum), handle.handler(signum,
                                                                                                              frame)))
        handle.hand_over()
        assert signal.getsignal(signal.SIGHUP) is not handle.handler  # (still ours: the one before it is back)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's notes it, then calls ours: no Stopped
        os.kill(os.getpid(), signal.SIGHUP)  # the fixture's handler, put back
        assert noted == [-signal.SIGTERM, signal.SIGHUP]
        signal.signal(signal.SIGTERM, theirs)


def test_signals_ignored_to_the_end_holds_to_the_commands_end_and_an_in_process_call_gets_its_handler_back(noted):
    """A command moving its finished outputs into place ignores SIGTERM from there on; run_main puts the handler
    before back when the command was called from Python."""
    mine = signal.getsignal(signal.SIGTERM)
    finished = []

    def body(args):
        signals_ignored_to_the_end()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            pass
        finished.append(True)
        return 0

    with pytest.raises(SystemExit) as e:
        run_main("radar-test", body, [])
    assert e.value.code == 0 and finished and noted == [] and signal.getsignal(signal.SIGTERM) is mine
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):
        pass
    assert noted == [signal.SIGTERM]  # after the command, the handler before takes it again


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_command_run_as_a_process_ignores_sigterm_and_ctrl_c_on_its_way_out(tmp_path, sig):
    """(A SIGTERM after a command's work, in its exit, turned its status into 143: slurm/fid.sbatch requeued a
    finished radar-fid, and radar-cache's array task counted as failed, cancelling verify and training; a Ctrl-C
    there printed a KeyboardInterrupt traceback from an atexit callback, or ended the process by SIGINT.)"""
    import subprocess
    import sys

    code = ("import atexit, os, signal, sys\n"
            "from radar_train.cli.common import run_main\n"
            "sys.argv = ['radar-test']\n"
            f"atexit.register(lambda: (os.kill(os.getpid(), signal.{sig}), print('still here', flush=True)))\n"
            "run_main('radar-test', lambda args: 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONUTF8": "1"}, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "still here\n", ""), r.stderr


@pytest.mark.parametrize("program,one_line", [("radar-eval", True), ("python", False)])
def test_ctrl_c_while_a_command_still_imports_is_one_line(program, one_line):
    """A Ctrl-C in a command's first seconds (its imports, before main() handles Ctrl-C) printed a traceback of
    14-57 lines; a program that imports the package (argv[0] not a radar-* command) keeps Python's own."""
    import subprocess
    import sys

    code = f"import sys; sys.argv[0] = {program!r}; import radar_train.cli; raise KeyboardInterrupt"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if one_line:
        assert r.stderr == "radar-eval: interrupted\n", r.stderr
    else:
        assert "Traceback" in r.stderr and "KeyboardInterrupt" in r.stderr, r.stderr


def test_a_command_started_in_a_folder_that_was_deleted_says_so_in_one_line(tmp_path):
    """Every path absolute, yet `[Errno 2] No such file or directory` naming nothing, or oneMKL's 'FATAL ERROR:
    Cannot load libtorch_cpu.so' (a broken install, by the look of it) as torch loaded."""
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).parent / "radar-generate"
    script = f'mkdir gone && cd gone && rmdir ../gone && exec "{command}" --output {tmp_path / "out"}'
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, "error: the current folder no longer exists (deleted or moved while the "
                                            "shell was in it): cd to an existing folder\n"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_report_command_stopped_while_it_measures_says_nothing_was_written(sig, noted, capsys):
    """(radar-toy measure / masks / combine, radar-bench tradeoff, radar-eval, radar-train export died of SIGTERM
    without a line; SIGHUP, a closed terminal, is taken as SIGTERM is.)"""
    from radar_train.cli.toy import _report

    def measuring():
        signal_self(sig)
        pytest.fail("the signal did not stop the measurement")

    mine = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        run_main("radar-toy", lambda args: _report(measuring, "radar-toy measure"), [])
    said = {signal.SIGTERM: "radar-toy measure: stopped by SIGTERM; nothing was written",
            signal.SIGHUP: "radar-toy measure: stopped by SIGHUP; nothing was written",
            signal.SIGINT: "radar-toy: interrupted; nothing was written"}[sig]
    assert e.value.code == {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}[sig]
    assert capsys.readouterr().err.strip().splitlines()[-1] == said
    assert signal.getsignal(signal.SIGTERM) is mine and noted == []


def test_signals_while_a_report_command_moves_its_outputs_in_leave_it_finished(tmp_path, noted, capsys, monkeypatch):
    """A SIGTERM and a Ctrl-C held back while the report's files were renamed into place were handled once they
    were: the command, its outputs in place, ended with status 143 or 130 (and said it was stopped)."""
    from radar_train.cli.toy import _report
    from radar_train.outputs import staged_entries

    out = tmp_path / "out"
    real_replace, renames = os.replace, []

    def replace(src, dst):
        if not renames:
            signal_self(signal.SIGTERM)
            signal_self(signal.SIGINT)
        renames.append(src)
        return real_replace(src, dst)

    def measuring():
        with staged_entries(out, ["metrics.json"]) as stage:
            (stage / "metrics.json").write_text("{}")
            monkeypatch.setattr(os, "replace", replace)
        return {"markdown": "| the table |"}

    mine = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(SystemExit) as e:
        run_main("radar-toy", lambda args: _report(measuring, "radar-toy measure"), [])
    monkeypatch.undo()
    assert e.value.code == 0 and renames and capsys.readouterr().out.strip() == "| the table |"
    assert (out / "metrics.json").read_text() == "{}" and noted == []
    assert {s: signal.getsignal(s) for s in mine} == mine  # (put back after the in-process call)


def test_an_os_error_ending_a_background_thread_is_one_warning_line(capsys):
    """(TensorBoard's event writer thread on a full disk: an 18-line traceback before the command's own error line.)"""
    import errno
    import threading

    from radar_train.cli.common import thread_error_line

    seen = []
    hook = thread_error_line("radar-train", seen.append)

    class _AsyncWriterThread(threading.Thread):
        pass

    def failing(exc):
        try:
            raise exc
        except BaseException as e:
            return threading.ExceptHookArgs((type(e), e, e.__traceback__, _AsyncWriterThread()))

    hook(failing(OSError(errno.ENOSPC, "No space left on device")))
    assert capsys.readouterr().err == ("warning: radar-train: a background thread (_AsyncWriterThread) stopped: "
                                       "No space left on device (errno 28)\n")
    other = failing(ValueError("a bug"))
    hook(other)
    assert seen == [other] and capsys.readouterr().err == ""


class _SignalOnSetName:
    """A descriptor whose `__set_name__` (run when a class body that holds it ends, as in peft's config classes
    imported inside a command's block) sends the process `signum`."""

    def __init__(self, signum):
        self.signum = signum

    def __set_name__(self, owner, name):
        os.kill(os.getpid(), self.signum)


def test_a_sigterm_during_a_class_bodys_set_name_is_stopped_not_a_runtime_error(noted, capsys):
    """Python 3.11 wraps what `__set_name__` raises in a RuntimeError: SIGTERM while radar-eval imported peft was a
    40-line traceback, status 1 (SLURM: failed, not stopped)."""
    def body(argv):
        with sigterm_stops():
            type("Config", (), {"field": _SignalOnSetName(signal.SIGTERM)})
        return 0

    with pytest.raises(Stopped):
        body([])

    def body_int(argv):
        type("Config", (), {"field": _SignalOnSetName(signal.SIGINT)})
        return 0

    with pytest.raises(SystemExit) as e:
        run_main("radar-x", body_int, [])
    assert e.value.code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "radar-x: interrupted"
