"""radar_train.outputs: the output rule's checks and the whole-or-absent writers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from radar_train.outputs import (OutputError, atomic_file, check_no_overlap, check_output_dir, check_output_file,
                                 check_replace_dir, check_resume_dir, replace_dir, staged_entries, write_text_atomic)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.json").write_text("{}")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    (tmp_path / "file.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("output,inputs,message", [
    ("cache", {"--cache": "cache"}, "is the input --cache"),
    ("cache/eval", {"--cache": "cache"}, "lies inside the input --cache"),
    ("run", {"--ckpt": "run/checkpoints/last.ckpt"}, "would overwrite the input --ckpt"),
    ("out", {"--caches": ["x", "cache"], "--vae": None}, None),
])
def test_overlap_names_the_output_and_the_input(tree, monkeypatch, output, inputs, message):
    monkeypatch.chdir(tree)
    if message is None:
        check_no_overlap("--output", output, inputs)
        return
    with pytest.raises(OutputError, match=message) as e:
        check_no_overlap("--output", output, inputs)
    assert str(e.value).startswith(f"--output {output} ") and "\n" not in str(e.value)


def test_an_output_folder_above_an_input_is_refused_only_where_it_would_replace_it(tree):
    inputs = {"--cache": tree / "cache"}
    check_output_dir(tree, ["eval.json"], inputs=inputs)  # eval.json beside the cache: nothing of it replaced
    with pytest.raises(OutputError, match="would overwrite the input --cache"):
        check_output_dir(tree, ["cache"], inputs=inputs)


def test_file_output_rules(tree):
    with pytest.raises(OutputError, match="exists: pass --overwrite"):
        check_output_file(tree / "file.json")
    check_output_file(tree / "file.json", overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tree / "run", overwrite=True)
    with pytest.raises(OutputError) as e:  # (the option's value as given, then the file in the way)
        check_output_file(tree / "file.json" / "x.json")
    assert str(e.value) == f"--output {tree / 'file.json' / 'x.json'}: {tree / 'file.json'} is a file, not a folder"


def test_a_link_to_nothing_is_an_existing_output_and_a_tilde_is_a_name_only_written_as_one(tmp_path, monkeypatch):
    """A dangling (or looping) link at the output is the user's: replaced only with --overwrite. A `~` that
    reaches a command (a config file's, a quoted one, `--output=~/x`: no shell expanded it) is refused, naming the
    expanded path: it made a folder named `~` here; `./~` names such a folder, in the checks as in the writes."""
    (tmp_path / "dangling.pth").symlink_to("nowhere/missing.pth")
    (tmp_path / "loop.pth").symlink_to("loop.pth")
    for name in ("dangling.pth", "loop.pth"):
        with pytest.raises(OutputError, match="exists: pass --overwrite"):
            check_output_file(tmp_path / name)
        check_output_file(tmp_path / name, overwrite=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    (tmp_path / "~" / "base.pth").write_bytes(b"mine")
    with pytest.raises(OutputError, match="is the input --vae_checkpoint"):
        check_output_file("./~/base.pth", inputs={"--vae_checkpoint": "~/base.pth"}, overwrite=True)
    monkeypatch.setenv("HOME", "/home/someone")
    for check in (lambda p: check_output_file(p, overwrite=True), lambda p: check_output_dir(p, ["eval.json"]),
                  lambda p: check_resume_dir(p, "m.json", "a cache"),
                  lambda p: check_replace_dir(p, lambda q: False, "an adapter folder")):
        with pytest.raises(OutputError) as e:
            check("~/base.pth")
        assert str(e.value) == ("--output ~/base.pth: '~' is not expanded here (only a shell expands it, at the start "
                                "of a word): give /home/someone/base.pth, or ./~/base.pth for a folder named '~'")


def test_a_name_too_long_for_the_file_system_or_for_a_temporary_is_refused_before_anything_is_written(tmp_path):
    check_output_file(tmp_path / ("a" * 150 + ".pth"))
    with pytest.raises(OutputError, match=r"a name too long here \(244 bytes, .* temporary name .*; at most 255\)"):
        check_output_file(tmp_path / ("a" * 240 + ".pth"))
    with pytest.raises(OutputError, match=r"a name too long here \(aaaa.*… has 256 bytes; at most 255\)"):
        check_output_file(tmp_path / ("a" * 256))  # (past the limit even `exists` fails)
    for check in (lambda p: check_output_dir(p, ["eval.json"]), lambda p: check_resume_dir(p, "m.json", "a cache"),
                  lambda p: check_replace_dir(p, lambda q: False, "an adapter folder")):
        with pytest.raises(OutputError, match="has 256 bytes"):
            check(tmp_path / "new" / ("é" * 128) / "out")  # (a folder to be made on the way)
    with pytest.raises(OutputError, match="temporary name"):  # a folder replaced whole is made beside it first
        check_replace_dir(tmp_path / ("b" * 240), lambda q: False, "an adapter folder")
    check_output_dir(tmp_path / ("b" * 255), ["eval.json"])  # (its entries are written inside it)
    assert list(tmp_path.iterdir()) == []


def test_a_file_output_ending_in_a_slash_is_refused(tmp_path):
    with pytest.raises(OutputError, match="new/ ends in a slash, as a folder does: give a file name"):
        check_output_file(str(tmp_path / "new") + "/")


def test_folder_entries_are_replaced_only_with_overwrite(tree):
    (tree / "out").mkdir()
    (tree / "out" / "eval.json").write_text("old")
    (tree / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds eval.json"):
        check_output_dir(tree / "out", ["eval.json", "eval.md"])
    check_output_dir(tree / "out", ["eval.json", "eval.md"], overwrite=True)
    with pytest.raises(OutputError, match="is an existing file"):
        check_output_dir(tree / "file.json", ["eval.json"], overwrite=True)


def test_a_replaced_folder_must_be_of_its_kind_even_with_overwrite(tree):
    def is_run(p):
        return (p / "checkpoints").is_dir()

    check_replace_dir(tree / "new", is_run, "a run")
    with pytest.raises(OutputError, match="already holds a run: pass --overwrite"):
        check_replace_dir(tree / "run", is_run, "a run")
    check_replace_dir(tree / "run", is_run, "a run", overwrite=True)
    with pytest.raises(OutputError, match="not a run and not empty: it is never replaced"):
        check_replace_dir(tree / "cache", is_run, "a run", overwrite=True)


def test_a_resumed_folder_must_hold_its_marker(tree):
    check_resume_dir(tree / "cache", "manifest.json", "a cache")
    check_resume_dir(tree / "new", "manifest.json", "a cache")
    with pytest.raises(OutputError, match="holds no manifest.json"):
        check_resume_dir(tree / "run", "manifest.json", "a cache")


def test_a_folder_another_worker_is_creating_is_resumable(tmp_path):
    # between writing its temporary manifest and linking it, a concurrent worker's folder holds only that file
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".manifest.json.tmp-0123456789ab").write_text("{}")
    check_resume_dir(tmp_path / "cache", "manifest.json", "a cache")
    (tmp_path / "cache" / ".other.tmp-0123").write_text("{}")
    with pytest.raises(OutputError, match="holds no manifest.json"):
        check_resume_dir(tmp_path / "cache", "manifest.json", "a cache")


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"
    write_text_atomic(tmp_path / "a.txt", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "new"


def test_a_write_error_that_names_no_file_is_raised_naming_the_output(tmp_path):
    """A full disk while writing into an open file (e.g. a WebDataset tar): the error names the output."""
    import errno

    (tmp_path / "a.tar").write_text("old")
    with pytest.raises(OSError) as e:
        with atomic_file(tmp_path / "a.tar"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "a.tar")
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"] and (tmp_path / "a.tar").read_text() == "old"
    with pytest.raises(FileNotFoundError) as e:  # one that names its file is left as it is
        with atomic_file(tmp_path / "b.txt"):
            open(tmp_path / "gone" / "x")
    assert e.value.filename == str(tmp_path / "gone" / "x")
    with pytest.raises(PermissionError) as e:  # one that names the hidden temporary is said of the output
        with atomic_file(tmp_path / "c.txt") as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert e.value.filename == str(tmp_path / "c.txt")


def test_staged_entries_replace_theirs_keep_the_rest_and_clean_up_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").write_text("old")
    (out / "notes.txt").write_text("mine")
    with staged_entries(out, ["grid.png", "vanilla"]) as stage:
        (stage / "grid.png").write_text("new")
        (stage / "vanilla").mkdir()
        (stage / "vanilla" / "a.png").write_text("png")
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "notes.txt", "vanilla"]
    assert (out / "grid.png").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    with pytest.raises(RuntimeError):
        with staged_entries(out, ["grid.png"]) as stage:
            (stage / "grid.png").write_text("newer")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "notes.txt", "vanilla"]
    assert (out / "grid.png").read_text() == "new"
    with staged_entries(out, ["grid.png", "vanilla", "restored"]) as stage:  # a run without vanilla/ this time
        (stage / "grid.png").write_text("newest")
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "notes.txt"]  # no earlier run's vanilla/ beside it
    assert (out / "grid.png").read_text() == "newest" and (out / "notes.txt").read_text() == "mine"
    with pytest.raises(RuntimeError):
        with staged_entries(tmp_path / "fresh", ["grid.png"]):
            raise RuntimeError("killed")
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("stop_at", range(1, 6))
def test_a_swap_stopped_at_any_rename_leaves_entries_of_one_run_only(tmp_path, monkeypatch, stop_at):
    """A run killed while its entries are swapped in (here: the stop_at-th rename fails) leaves the earlier
    run's entries or this run's, never a mix (this run's vanilla/ beside the earlier grid and report)."""
    import os

    out = tmp_path / "out"
    names = ["vanilla", "restored", "grid.png", "generate.json"]
    for run in ("old", "new"):
        if run == "new":
            real, calls = os.replace, []

            def failing(a, b, *args, **kw):
                calls.append(a)
                if len(calls) == stop_at:
                    raise KeyboardInterrupt("killed")
                return real(a, b, *args, **kw)

            monkeypatch.setattr(os, "replace", failing)
        try:
            with staged_entries(out, names) as stage:
                for n in names:
                    (stage / n).write_text(run)
        except KeyboardInterrupt:
            pass
    left = {n: (out / n).read_text() for n in names if (out / n).exists()}
    # the earlier run's, whole: a failed swap puts back what had moved (before, the earlier entries stayed in the
    # staging folder's .replaced/, which its cleanup removed: an empty folder)
    assert left == {n: "old" for n in names}, left


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("at", [1, 3, 6])
def test_ctrl_c_or_sigterm_during_a_swap_waits_for_its_end(tmp_path, monkeypatch, sig, at):
    """A Ctrl-C landing between the swap's renames (radar-eval --overwrite) left the output folder empty: the
    earlier report in the staging folder its cleanup removed, the new one too. The signal now waits for the
    swap's end, then acts as it would have (KeyboardInterrupt; a command's SIGTERM handler)."""
    import os
    import signal

    out = tmp_path / "out"
    names = ["eval.json", "eval.md", "grid.png"]
    with staged_entries(out, names) as stage:
        for n in names:
            (stage / n).write_text("old")
    real, calls = os.replace, []

    def signalled(a, b, *args, **kw):
        calls.append(a)
        if len(calls) == at:
            signal.raise_signal(getattr(signal, sig))
        return real(a, b, *args, **kw)

    class Stopped(Exception):
        pass

    def stop(*_):
        raise Stopped

    monkeypatch.setattr(os, "replace", signalled)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(KeyboardInterrupt if sig == "SIGINT" else Stopped):
            with staged_entries(out, names) as stage:
                for n in names:
                    (stage / n).write_text("new")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert {n: (out / n).read_text() for n in names if (out / n).exists()} == {n: "new" for n in names}
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # (no staging folder left)


def test_ctrl_c_between_replace_dirs_renames_keeps_a_folder_at_the_output(tmp_path, monkeypatch):
    """radar-train export --overwrite: a Ctrl-C after the old folder's rename left nothing at --output."""
    from pathlib import Path
    import signal

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a").write_text("1")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "b").write_text("2")
    real = Path.rename

    def signalled(self, target):
        out = real(self, target)
        signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Path, "rename", signalled)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(tmp_path / "tmp", tmp_path / "old")
    monkeypatch.setattr(Path, "rename", real)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["b"]


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a").write_text("1")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "b").write_text("2")
    replace_dir(tmp_path / "tmp", tmp_path / "old")
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and [p.name for p in (tmp_path / "old").iterdir()] == ["b"]


_KILLED_INSIDE = """
import os, sys
from radar_train.outputs import atomic_file, staged_entries
out = sys.argv[1]
if sys.argv[2] == "file":
    with atomic_file(out + "/a.txt") as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), 9)
with staged_entries(out, ["grid.png"]) as stage:
    (stage / "grid.png").write_text("half")
    os.kill(os.getpid(), 9)
"""

_WRITING = """
import sys
from radar_train.outputs import atomic_file
with atomic_file(sys.argv[1] + "/a.txt") as tmp:
    tmp.write_text("being written")
    print("ready", flush=True)
    sys.stdin.read()
"""


def test_a_killed_writers_temporaries_go_with_the_next_write_and_no_one_elses(tmp_path):
    import socket
    import subprocess
    import sys

    for how in ("file", "staged"):
        assert subprocess.run([sys.executable, "-c", _KILLED_INSIDE, str(tmp_path), how]).returncode == -9
    killed = sorted(p.name for p in tmp_path.iterdir())
    assert len(killed) == 2 and killed[0].startswith(".a.txt.tmp-") and killed[1].startswith(".staging.tmp-")
    live = subprocess.Popen([sys.executable, "-c", _WRITING, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "ready\n"
        others = {f".a.txt.tmp-0123abcd-{live.pid + 1}-not-{socket.gethostname()}",  # another host's writer
                  ".a.txt.tmp-0123abcd"}  # an older naming: its writer cannot be told
        for name in others:
            (tmp_path / name).write_text("someone else's")
        (tmp_path / ".b.txt.tmp-0123abcd-1-x").write_text("another file's")
        writing = {p.name for p in tmp_path.iterdir()} - set(killed) - others - {".b.txt.tmp-0123abcd-1-x"}
        assert len(writing) == 1 and writing.pop().endswith(f"-{live.pid}-{socket.gethostname()}")
        write_text_atomic(tmp_path / "a.txt", "new")
        names = {p.name for p in tmp_path.iterdir()}
        assert killed[0] not in names and killed[1] in names  # only the temporaries of a.txt are a.txt's writer's
        assert others <= names and ".b.txt.tmp-0123abcd-1-x" in names and len(names) == 6
        with staged_entries(tmp_path, ["grid.png"]) as stage:
            (stage / "grid.png").write_text("new")
        assert killed[1] not in {p.name for p in tmp_path.iterdir()}
    finally:
        live.stdin.close()
        live.wait()
    assert (tmp_path / "a.txt").read_text() == "being written"  # the live writer finished last


_KILLED_MID_REPLACE = """
import os, sys
from pathlib import Path
import radar_train.outputs as outputs
renames = []
real = Path.rename
def rename(self, target):
    if sys.argv[2] == "between" and renames:
        os.kill(os.getpid(), 9)
    renames.append(target)
    return real(self, target)
def remove(p):
    os.kill(os.getpid(), 9)
Path.rename = rename
outputs._remove = remove
outputs.replace_dir(Path(sys.argv[1]) / "new", Path(sys.argv[1]) / "adapter")
"""


@pytest.mark.parametrize("killed", ["between", "after"])  # the two renames / the swap and the old folder's removal
def test_a_replace_killed_mid_way_leaves_the_previous_folder_found_again(tmp_path, killed):
    import subprocess
    import sys

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w").write_text("previous")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "w").write_text("next")
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_REPLACE, str(tmp_path), killed])
    assert proc.returncode == -9
    assert any(p.name.startswith(".adapter.old-") for p in tmp_path.iterdir())
    with pytest.raises(OutputError, match="already holds an adapter"):  # found again: it needs --overwrite
        check_replace_dir(tmp_path / "adapter", lambda p: True, "an adapter")
    assert (tmp_path / "adapter" / "w").read_text() == ("previous" if killed == "between" else "next")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapter.old-")]


@pytest.mark.parametrize("command", ["radar-generate", "radar-fid", "radar-fid worker"])
def test_a_progress_folder_that_is_a_link_is_refused(tmp_path, command):
    """Clearing it for a fresh start would act on the link (shutil.rmtree refuses one): one line instead."""
    from radar_train.inference.fid_progress import FidProgress
    from radar_train.inference.generate_progress import GenerateProgress

    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    if command == "radar-generate":
        progress = GenerateProgress(out, {"a": 1}, ["vanilla"])
        link = out / "generate-progress"
    else:
        part = (0, 2) if command.endswith("worker") else None
        progress = FidProgress(out, {"a": 1}, ["vanilla"], {"vanilla": "samples_vanilla.npz"}, 4, 8, part)
        link = progress.dir
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "empty")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=f"{link.name} is a link, not a folder of radar-(generate|fid) progress"):
            progress.check(overwrite)
    assert link.is_symlink() and list((tmp_path / "empty").iterdir()) == []


def test_an_empty_output_is_refused_by_every_output_check(tmp_path, monkeypatch):
    """`--output ""` (a script's unset variable) read as the current folder: radar-generate wrote its PNGs there."""
    monkeypatch.chdir(tmp_path)
    checks = [lambda: check_output_dir("", ["a"], "--output"),
              lambda: check_replace_dir("", lambda p: True, "an adapter folder", "--output"),
              lambda: check_resume_dir("", "manifest.json", "a cache", "--output")]
    for check in checks:
        with pytest.raises(OutputError) as e:
            check()
        assert str(e.value).endswith("is empty: name the output (. for the current folder)")
    with pytest.raises(OutputError) as e:  # (a file's: `.`, which that advice named, is a folder, refused as one)
        check_output_file("", "--json")
    assert str(e.value) == "--json is empty: give a file name"
    assert list(tmp_path.iterdir()) == []
    assert str(check_output_dir(".", ["a"], "--output")) == "."  # (the current folder, named)


def test_a_resumed_folder_that_is_a_link_to_nothing_is_said_to_be_one(tmp_path):
    """(It was refused as 'is a file, not a folder'.)"""
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(OutputError) as e:
        check_resume_dir(tmp_path / "out", "manifest.json", "a cache", "--output")
    assert str(e.value) == (f"--output {tmp_path / 'out'} is a link to nothing ({tmp_path / 'gone'}): give a folder, "
                            f"or make the one it names")
    (tmp_path / "gone").mkdir()
    assert check_resume_dir(tmp_path / "out", "manifest.json", "a cache", "--output") == tmp_path / "out"


def test_an_entry_of_another_kind_is_never_replaced_even_with_overwrite(tmp_path):
    """A folder where the command writes a file (metrics.json/), or a file where it writes a folder (restored): not
    an earlier run's output. --overwrite moved the folder, with the user's files in it, into the staging folder,
    which was deleted."""
    out = tmp_path / "out"
    (out / "metrics.json").mkdir(parents=True)
    (out / "metrics.json" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"metrics.json is a folder, not what this command writes there: it is "
                                          r"never replaced \(not with --overwrite either\)"):
        check_output_dir(out, ["metrics.json", "restored"], overwrite=True)
    (out / "metrics.json" / "keep.txt").unlink()
    (out / "metrics.json").rmdir()
    (out / "restored").write_text("mine")
    with pytest.raises(OutputError, match=r"restored is a file, not what this command writes there"):
        check_output_dir(out, ["metrics.json", "restored"], overwrite=True)
    (out / "restored").unlink()
    (out / "metrics.json").write_text("{}")
    (out / "restored").mkdir()
    assert check_output_dir(out, ["metrics.json", "restored"], overwrite=True) == out  # an earlier run's: replaced


def test_a_failed_write_of_a_staged_report_names_the_file_the_user_will_look_for(tmp_path, monkeypatch):
    """A full disk while radar-eval / radar-toy / radar-bench tradeoff wrote its report was `error: radar-eval: No
    space left on device (errno 28)`, naming no file."""
    from pathlib import Path

    from radar_train.outputs import write_report

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as e:
        with staged_entries(tmp_path / "out", ["r.json", "r.md"]) as stage:
            write_report(stage, "r", {"markdown": "x"})
    assert (e.value.errno, e.value.filename) == (28, str(tmp_path / "out" / "r.json"))


_FULL_DISK_MERGE = """
import resource, signal, sys, torch
from radar_train.export.merged import write_merged
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit fails with EFBIG instead)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    write_merged({"w": torch.zeros(100000)}, sys.argv[1], {"x": 1})
except OSError as e:
    print("OSError", e.errno, e.filename)
"""


def test_merge_to_a_pth_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path):
    """torch.save straight onto the file raised its zip writer's RuntimeError ('unexpected pos ...'): a traceback."""
    import subprocess
    import sys

    out = tmp_path / "merged.pth"
    r = subprocess.run([sys.executable, "-c", _FULL_DISK_MERGE, str(out)], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == f"OSError 27 {out}", r.stdout + r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_merges_record_that_fails_is_named_not_the_weights(tmp_path, monkeypatch):
    from pathlib import Path

    import torch

    from radar_train.export.merged import write_merged

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as e:
        write_merged({"w": torch.zeros(4)}, tmp_path / "m.pth", {"x": 1})
    assert e.value.filename == str(tmp_path / "m.pth.json") and sorted(p.name for p in tmp_path.iterdir()) == []


def test_progress_settings_that_differ_show_both_mappings_in_one_key_order():
    """The saved side was read back with sorted keys, the run's in its own order: `{"top_k": 64, "cfg": 2.0}` beside
    `{"cfg": 1.5, "top_k": 900}`, hard to compare by eye."""
    from radar_train.outputs import fingerprint_differences

    assert fingerprint_differences({"sampling": {"cfg": 1.5, "top_k": 900}, "n": 4},
                                   {"sampling": {"top_k": 64, "cfg": 2.0}, "n": 4}) == [
        'sampling: {"cfg": 1.5, "top_k": 900} vs {"cfg": 2.0, "top_k": 64}']


def test_a_device_or_a_pipe_at_an_output_file_is_refused_even_with_overwrite(tmp_path):
    """--overwrite replaced them with a regular file (`radar-train merge --output dev.pth --overwrite`, `radar-bench
    --json f.json --overwrite`): as root, `--json /dev/null --overwrite` would have replaced the system's /dev/null."""
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "null.json").symlink_to("/dev/null")
    for name in ("fifo.json", "null.json"):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=f"{name} is a device, a pipe or a socket, not a file, which "
                                                  f"--overwrite does not replace"):
                check_output_file(tmp_path / name, overwrite=overwrite)
    assert (tmp_path / "fifo.json").is_fifo() and os.readlink(tmp_path / "null.json") == "/dev/null"


def test_an_entry_or_folder_to_replace_that_may_not_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """radar-generate --overwrite over a read-only vanilla/ sampled, then failed moving it aside ('[Errno 13]
    Permission denied: gen/vanilla -> gen/generate-progress/.replaced/vanilla'). (As root, whom no permission stops,
    the denial comes through os.access.)"""
    (tmp_path / "gen" / "vanilla").mkdir(parents=True)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    real = os.access
    denied = {tmp_path / "gen" / "vanilla", tmp_path / "adapter"}
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k:
                        False if Path(path) in denied and mode & os.W_OK else real(path, mode, *a, **k))
    with pytest.raises(OutputError, match=r"gen: cannot replace vanilla/ \(permission denied on it"):
        check_output_dir(tmp_path / "gen", ["vanilla", "grid.png"], overwrite=True)
    with pytest.raises(OutputError, match=r"adapter: cannot replace adapter/ \(permission denied on it"):
        check_replace_dir(tmp_path / "adapter", lambda p: True, "an adapter folder", overwrite=True)
    denied.clear()
    check_output_dir(tmp_path / "gen", ["vanilla", "grid.png"], overwrite=True)


def test_a_mount_point_is_refused_as_a_folder_replaced_as_a_whole(tmp_path, monkeypatch):
    """radar-train export --output onto an empty mount point (a container's bind mount) did the work, then failed
    renaming the finished folder into place (EBUSY)."""
    (tmp_path / "mnt").mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == tmp_path / "mnt" or real(path))
    with pytest.raises(OutputError, match="mnt is a mount point, and an adapter folder is written beside it and "
                                          "renamed into place whole"):
        check_replace_dir(tmp_path / "mnt", lambda p: True, "an adapter folder")
    (tmp_path / "link").symlink_to(tmp_path / "mnt")  # (os.path.ismount says False for the link itself)
    with pytest.raises(OutputError, match="link is a mount point"):
        check_replace_dir(tmp_path / "link", lambda p: True, "an adapter folder")
    assert real("/") and not real(tmp_path / "mnt")


def test_an_error_naming_a_hidden_temporary_is_said_of_the_entry_the_user_looks_for(tmp_path):
    """With an inode quota the create of a staged file fails, naming the staging folder's hidden temporary
    (`OUT/.staging.tmp-.../eval.json`); radar-toy train's weights, written through atomic_file into the staging folder,
    were said of the staging folder too."""
    import errno

    from radar_train.outputs import naming, staged_name, temp_name

    with staged_entries(tmp_path / "out", ["eval.json", "toy_vae.safetensors"]) as stage:
        with pytest.raises(OSError) as e:
            with naming(staged_name(stage, "eval.json")):
                raise OSError(errno.EDQUOT, "Disk quota exceeded", str(stage / "eval.json"))
        assert e.value.filename == str(tmp_path / "out" / "eval.json")
        with pytest.raises(OSError) as e:
            with atomic_file(stage / "toy_vae.safetensors") as tmp:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        assert e.value.filename == str(tmp_path / "out" / "toy_vae.safetensors")
        (stage / "eval.json").write_text("{}")
        (stage / "toy_vae.safetensors").write_text("x")
    with pytest.raises(OSError) as e:  # (a file of the user's, named: kept as it is)
        with naming(tmp_path / "report.json"):
            raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "mine.txt"))
    assert e.value.filename == str(tmp_path / "mine.txt")
    with pytest.raises(OSError) as e:  # (a hidden temporary of ours beside the output)
        with naming(tmp_path / "report.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(temp_name(tmp_path / "report.json")))
    assert e.value.filename == str(tmp_path / "report.json")


def test_a_write_that_fails_removes_the_folders_it_made_for_its_output(tmp_path):
    """`radar-train export --output x/a/b`, `radar-eval --output new/deeper`, `radar-accel calibrate --output
    sub/r.yaml` on a full disk left the empty folders they had made (docs/cli.md: a folder the command created goes
    again while empty)."""
    import errno

    from radar_train.export.adapter import save_adapter

    def full():
        return OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        with atomic_file(tmp_path / "sub" / "deeper" / "r.yaml"):
            raise full()
    with pytest.raises(OSError):
        with staged_entries(tmp_path / "new" / "deeper", ["eval.json"]):
            raise full()

    class Model:  # (a peft model whose save fails)
        def named_parameters(self):
            return iter(())

        def save_pretrained(self, path, **kwargs):
            raise full()

    with pytest.raises(OSError):
        save_adapter(Model(), tmp_path / "x" / "a" / "b", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # (a folder that was there stays, and so does one something else went into)
    with pytest.raises(OSError):
        with atomic_file(tmp_path / "mine" / "made" / "r.yaml"):
            (tmp_path / "mine" / "made" / "other.txt").write_text("x")
            raise full()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "mine", "mine/made", "mine/made/other.txt"]


def test_safetensors_own_os_error_in_an_atomic_file_names_the_file(tmp_path):
    """(radar-fid's progress save on a full disk: `error: radar-fid: Error while serializing: I/O error: No space left
    on device (os error 28)`, naming no file.)"""
    class SafetensorError(Exception):
        pass

    with pytest.raises(OSError) as e:
        with atomic_file(tmp_path / "state.safetensors"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert (e.value.errno, e.value.filename) == (28, str(tmp_path / "state.safetensors"))
    with pytest.raises(SafetensorError):  # (another of its errors: as it is)
        with atomic_file(tmp_path / "state.safetensors"):
            raise SafetensorError("invalid header")
