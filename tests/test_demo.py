"""radar-demo end to end on the tiny model (the toy default runs the same steps, only longer)."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_checks import signal_self

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_step_and_says_where_its_outputs_are(tmp_path):
    out = tmp_path / "my runs" / "été demo"  # (a cluster user's path: a space and a non-ASCII letter)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the tiny model runs best on one thread
    env.pop("RADAR_PROGRESS", None)
    env.pop("RADAR_PROGRESS_INTERVAL", None)
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.demo", "--output", str(out), "--model", "tiny",
                        "--train_steps", "20", "--classes", "0-2", "--seeds", "0",
                        "--configs", "configs"],  # relative to where it is run; the steps run in the output folder
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # every message once (output piped, as in a log): no line of stdout and stderr together repeats
    lines = [ln.strip() for ln in (r.stdout + "\n" + r.stderr).splitlines() if ln.strip()]
    repeated = sorted({ln for ln in lines if lines.count(ln) > 1})
    assert repeated == [], repeated
    assert sum("| metric |" in ln for ln in lines) == 1  # the eval table, once
    assert any(ln.startswith("radar-cache: 80 pairs in ") for ln in lines)  # progress in a pipe: final lines
    assert any(ln.startswith("train: 20 steps in ") for ln in lines) and "Epoch" not in r.stdout + r.stderr
    assert any(ln.startswith("radar-generate: 3 samples in ") for ln in lines)
    assert any(ln.startswith("radar-eval: 16 pairs in ") for ln in lines)
    for step in ("cli.cache run", "cli.train fit", "cli.train export", "cli.generate", "cli.eval"):
        assert step in r.stdout
    assert (out / "generate" / "grid.png").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "tiny" / "tb").is_dir()
    metrics = json.loads((out / "eval" / "eval.json").read_text())
    assert metrics["num_pairs"] == 16
    assert "comparison grid:" in r.stdout and "eval table:" in r.stdout
    assert f"(tensorboard --logdir {shlex.quote(str(out / 'checkpoints' / 'tiny' / 'tb'))})" in r.stdout  # pastes


def _configs_as_written(checks):
    """check_step_configs without its commands: the config files as written (no group files in the shipped ones)."""
    from radar_train.inputs import read_yaml

    return [read_yaml(config) for _, config in checks]

def test_demo_names_a_missing_config(tmp_path):
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.demo", "--output", str(tmp_path), "--model", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "nope.yaml not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_default_configs_are_the_checkouts_else_those_of_the_folder_it_runs_in(tmp_path, monkeypatch):
    """Installed into site-packages (`pip install .`) nothing is beside the package: a demo run in the checkout
    takes its configs/."""
    from radar_train.cli import demo

    assert demo.default_configs() == ROOT / "configs"  # (this checkout, an editable install)
    monkeypatch.setattr(demo, "CHECKOUT_CONFIGS", tmp_path / "site-packages" / "configs")
    monkeypatch.chdir(tmp_path)
    assert demo.default_configs() == tmp_path / "site-packages" / "configs"
    # neither (an install from a wheel): the error says where the configs come from, not a site-packages path
    with pytest.raises(FileNotFoundError, match=r"^no configs/ folder: the demo reads configs/\{cache,train,generate\}"
                                                r"/<model>.yaml of a radar_train checkout .* pass --configs "):
        demo.demo(output=str(tmp_path / "out"))
    # a configs/ another package put into site-packages is not taken for the checkout's (its pyproject.toml is not)
    (tmp_path / "site-packages" / "configs").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    assert demo.default_configs() == tmp_path / "configs"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_during_a_step_lets_it_stop_and_is_one_line_naming_the_step(monkeypatch, capsys, interrupts):
    """Ctrl-C reaches radar-demo while its step runs (the step gets it too): the demo waits for the step to stop
    (radar-train fit saves the step it is in; subprocess.run killed it 0.25 s later), a second Ctrl-C ends the step
    at once; then one line naming the step (a 40-line KeyboardInterrupt traceback before)."""
    from radar_train.cli import demo
    from radar_train.cli.common import run_main

    calls = []

    class Step:
        pid = 4242

        def __init__(self, cmd, cwd):
            pass

        def wait(self):
            calls.append("wait")
            if calls.count("wait") <= interrupts:
                raise KeyboardInterrupt
            return 130

        def kill(self):
            calls.append("kill")

    monkeypatch.setattr(demo.subprocess, "Popen", Step)
    cmd = [sys.executable, "-m", "radar_train.cli.train", "fit", "--config", "c.yaml"]
    with pytest.raises(SystemExit) as done:
        run_main("radar-demo", lambda args: demo._run(cmd, Path("."), []), [])
    assert done.value.code == 130
    assert calls == (["wait", "wait"] if interrupts == 1 else ["wait", "wait", "kill", "wait"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "radar-demo: interrupted during radar-train fit; the same command goes on from there"
    assert not any("Traceback" in line for line in err)
    # (a terminal's Ctrl-C reaches the step too: the line told every user to `kill -INT` it as well)
    assert ("radar-demo: waiting for radar-train fit to stop (a terminal's Ctrl-C reached it too; after one to the "
            "demo alone, `kill -INT 4242` stops it; a second Ctrl-C ends it at once)") in err


def test_sigterm_is_handed_to_the_step_and_the_demo_waits_for_its_save(tmp_path, monkeypatch, capsys):
    """SIGTERM to radar-demo alone (`kill PID`): the step gets it too and saves what it has, and the demo waits for
    it, then ends with one line and status 143. Before, the demo ended at once and its step ran on alone."""
    import signal
    import threading
    import time

    from radar_train.cli import demo

    # a step that takes a second to save on SIGTERM, and runs a minute without one
    (tmp_path / "slow_step.py").write_text("import signal, sys, time\n"
                    "def stop(*a):\n"
                    "    time.sleep(1)\n"
                    "    open('saved', 'w').write('step saved')\n"
                    "    sys.exit(143)\n"
                    "signal.signal(signal.SIGTERM, stop)\n"
                    "open('started', 'w').close()\n"
                    "time.sleep(60)\n")

    out = tmp_path / "out"  # (where the steps run)

    def kill_when_started():
        while not (out / "started").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cmd = [sys.executable, "-m", "slow_step"]
    monkeypatch.setattr(demo, "_steps", lambda out, *a: demo._run(cmd, out, a[-1]))
    monkeypatch.setattr(demo, "check_step_configs", _configs_as_written)
    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=kill_when_started, daemon=True).start()
    t0 = time.monotonic()
    code = demo.demo(output=str(out), model="tiny")
    assert code == 143 and time.monotonic() - t0 < 30
    assert (out / "saved").read_text() == "step saved"  # (the demo ended after the step's save)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "radar-demo: stopped by SIGTERM during radar-slow_step; the same command goes on from there")
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_between_steps_or_in_the_checks_stops_the_demo_with_its_line(tmp_path, monkeypatch, capsys):
    """Between two steps, or while the steps' configs were checked, SIGTERM ended the demo without a line, and a step
    it had just started (or the checks) ran on alone."""
    import signal
    import threading
    import time

    from radar_train.cli import demo

    started = []
    quick = [sys.executable, "-c", "pass"]

    def steps(out, *a):
        demo._run(quick, out, a[-1])
        signal_self()
        started.append("the next step")  # (not reached)
        demo._run(quick, out, a[-1])

    monkeypatch.setattr(demo, "_steps", steps)
    monkeypatch.setattr(demo, "check_step_configs", _configs_as_written)
    before = signal.getsignal(signal.SIGTERM)
    assert demo.demo(output=str(tmp_path / "out"), model="tiny") == 143 and started == []
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "radar-demo: stopped by SIGTERM after radar-pass; the same command goes on from there")
    assert signal.getsignal(signal.SIGTERM) == before
    monkeypatch.undo()

    procs = []
    real_popen = demo.subprocess.Popen

    def popen(*a, **k):
        procs.append(real_popen(*a, **k))
        return procs[-1]

    def kill_when_checking():
        while not procs:
            time.sleep(0.05)
        signal_self()

    monkeypatch.setattr(demo.subprocess, "Popen", popen)
    monkeypatch.setattr(demo, "_fit_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    threading.Thread(target=kill_when_checking, daemon=True).start()
    assert demo.demo(output=str(tmp_path / "checked"), model="tiny") == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "radar-demo: stopped by SIGTERM before its first step; nothing was written")
    assert procs and all(p.poll() is not None for p in procs)  # (the checks did not run on alone)
    assert not (tmp_path / "checked").exists()


def test_a_last_step_that_finished_as_sigterm_came_ends_a_finished_demo(tmp_path, monkeypatch, capsys):
    """(radar-eval, its report written, ignored the signal and exited 0; the demo said it was stopped, 143, and
    its rerun redid export, generate and eval.)"""
    from radar_train.cli import demo
    from radar_train.cli.common import Stopped

    ran = []

    def run(cmd, cwd, done):
        step = demo._step_name(cmd)
        ran.append(step)
        done.append(step)
        if step == "radar-eval":
            raise Stopped(step, True)

    monkeypatch.setattr(demo, "_run", run)
    monkeypatch.setattr(demo, "check_step_configs", _configs_as_written)
    with pytest.raises(SystemExit) as e:
        from radar_train.cli.common import run_main

        run_main("radar-demo", lambda args: demo.demo(output=str(tmp_path / "out"), model="tiny"), [])
    assert e.value.code == 0 and ran[-1] == "radar-eval"
    assert "radar-demo done:" in capsys.readouterr().out


def test_a_rerun_goes_on_over_what_a_killed_step_was_writing(tmp_path):
    """A step killed mid-write (kill -9, an OOM kill) leaves its temporary beside its entry, e.g. the export's
    `.adapter.tmp-<token>-<pid>-<host>`: the demo folder is still the demo's (the step's next run clears it),
    and a file of the user's is still refused."""
    import socket

    from radar_train.cli.demo import check_demo_folder
    from radar_train.outputs import OutputError

    entries = {"cache", "checkpoints", "adapter", "generate", "eval"}
    (tmp_path / "adapter").mkdir()
    (tmp_path / f".adapter.tmp-0badc0de-999999-{socket.gethostname()[:32]}").mkdir()
    (tmp_path / f".adapter.old-0badc0de-999999-{socket.gethostname()[:32]}").mkdir()
    check_demo_folder(tmp_path, entries)
    (tmp_path / ".notes.tmp-x").write_text("mine")
    with pytest.raises(OutputError, match=r"holds \.notes\.tmp-x"):
        check_demo_folder(tmp_path, entries)


def test_a_demo_whose_first_step_fails_leaves_no_folder_it_made(tmp_path):
    import shutil

    configs = tmp_path / "configs"
    for sub in ("cache", "train", "generate"):
        shutil.copytree(ROOT / "configs" / sub, configs / sub)
    cache_cfg = configs / "cache" / "tiny.yaml"
    cache_cfg.write_text(cache_cfg.read_text().replace("images_per_class: 8", "images_per_class: -1"))
    out = tmp_path / "new" / "demo"
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.demo", "--output", str(out), "--model", "tiny",
                        "--configs", str(configs)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "new").exists()  # nor the parent made for it


@pytest.mark.parametrize("step, old, new, needle", [
    ("train", "max_steps:", "max_stepz:", "'trainer.max_stepz' is not an option of this command"),
    ("generate", "preset: toy", "presett: toy", "presett"),
    ("generate", "preset: toy", "preset: toyy", "model.preset: unknown model preset 'toyy'"),  # (named no file)
])
def test_a_config_its_step_would_not_parse_stops_the_demo_before_anything_is_written(tmp_path, step, old, new, needle):
    """A typo in the training (or generate) config used to surface after the cache step had written the cache:
    now radar-demo checks each step's config first (one line naming the file and the option) and makes nothing."""
    import shutil

    configs = tmp_path / "configs"
    for sub in ("cache", "train", "generate"):
        shutil.copytree(ROOT / "configs" / sub, configs / sub)
    cfg = configs / step / "toy.yaml"
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    out = tmp_path / "new" / "demo"
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.demo", "--output", str(out), "--configs", str(configs)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].count(str(cfg)) == 1 and needle in line[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("files,training", [
    ((), "fit"),
    (("checkpoints/last.ckpt",), "resume"),
    (("checkpoints/step-000010.ckpt",), "resume"),  # (last.ckpt's save failed: the demo refused the folder)
    (("checkpoints/step-000010.ckpt", "final/adapter_config.json"), "resume"),  # (then: export from no last.ckpt)
    (("checkpoints/last.ckpt", "final/adapter_config.json"), None),
], ids=["new", "last", "step-file", "step-file-and-final", "finished"])
def test_a_rerun_resumes_a_run_with_any_checkpoint_and_skips_only_a_finished_one(tmp_path, monkeypatch, files,
                                                                               training):
    from radar_train.cli import demo
    from radar_train.cli.common import run_main

    run_dir = Path("checkpoints") / "tiny"
    for name in files:
        (tmp_path / run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / run_dir / name).write_bytes(b"")
    commands = []
    monkeypatch.setattr(demo, "_run", lambda cmd, cwd, done: commands.append(cmd))
    with pytest.raises(SystemExit) as e:  # (run_main: the handlers the steps' end sets aside come back)
        run_main("radar-demo", lambda args: demo._steps(tmp_path, "tiny", Path("c.yaml"), Path("t.yaml"),
                                                        Path("g.yaml"), run_dir, Path("cache"), [0], [0], None, []), [])
    assert e.value.code in (0, None)
    fits = [c for c in commands if "radar_train.cli.train" in c and "fit" in c]
    assert {None: [], "fit": [[]], "resume": [["--ckpt_path", "last"]]}[training] == \
           [c[c.index("--ckpt_path"):] if "--ckpt_path" in c else [] for c in fits]


def test_the_demo_reads_its_configs_as_their_commands_do_with_a_config_key_and_group_files(tmp_path, monkeypatch):
    """A training config holding `config: tiny_base.yaml` (radar-train reads that file too) was refused: 'training
    config lacks trainer.default_root_dir or data.caches[0].path'; a generate config's model in a group file was
    taken for the default preset in the grid's check."""
    import shutil

    from radar_train.cli import demo

    configs = tmp_path / "configs"
    for sub in ("cache", "train", "generate"):
        shutil.copytree(ROOT / "configs" / sub, configs / sub)
    (configs / "train" / "tiny.yaml").rename(configs / "train" / "tiny_base.yaml")
    (configs / "train" / "tiny.yaml").write_text("config: tiny_base.yaml\n")
    gen = configs / "generate" / "tiny.yaml"
    assert "\nmodel:\n  preset: tiny\n" in gen.read_text()
    gen.write_text(gen.read_text().replace("\nmodel:\n  preset: tiny\n", "\nmodel: model.yaml\n"))
    (configs / "generate" / "model.yaml").write_text("preset: tiny\n")
    seen = {}
    monkeypatch.setattr(demo, "_steps", lambda out, model, cache_cfg, train_cfg, generate_cfg, run_dir, cache_dir,
                        cls_list, *a: seen.update(run_dir=run_dir, cache_dir=cache_dir, classes=cls_list))
    assert demo.demo(output=str(tmp_path / "out"), model="tiny", configs=str(configs), classes="0-2") == 0
    assert seen == {"run_dir": Path("checkpoints/tiny"), "cache_dir": Path("cache/tiny"), "classes": [0, 1, 2]}
