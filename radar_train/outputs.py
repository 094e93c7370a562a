"""The rule for every command that writes, in one place.

A command never deletes or replaces anything it did not create unless the user says so (`--overwrite`),
and writes nothing before every check has passed; an output that would overlap an input (be it, lie
inside it, or hold it) is refused, naming both. Each check raises `OutputError` (a `ValueError` with a
one-line message naming the option and the path); the entry points print it as `error: ...`, exit 2.

Four kinds of output:

    check_output_file(path, ...)           one file (a JSON, a YAML): an existing one needs --overwrite
    check_output_dir(path, writes, ...)    a folder the command writes named entries into (eval.json, grid.png,
                                           vanilla/): existing entries of those names need --overwrite
    check_replace_dir(path, is_ours, ...)  a folder replaced as a whole (an adapter): an existing one needs
                                           --overwrite and must be of that kind; any other folder is refused
    check_resume_dir(path, marker, ...)    a folder a command resumes into (a cache, a WebDataset export):
                                           absent, empty, or holding `marker` (the command checks it is its own)

and the writers that keep "whole or absent": `atomic_file` / `write_text_atomic` (temporary file in the
same folder, renamed), `staged_entries` (a folder's entries written under a temporary folder, moved in at
the end) and `replace_dir` (a finished temporary folder swapped in). Their temporaries carry the writing
process in their names (`temp_name`), so a later run clears what a killed one left (`clear_stale_temps`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

__all__ = ["OutputError", "Inputs", "given_output", "check_no_tilde", "check_output_file", "check_output_dir",
           "check_replace_dir", "check_resume_dir", "check_no_overlap", "atomic_file", "write_text_atomic",
           "staged_entries", "swap_entries", "replace_dir", "check_none_appeared", "temp_name", "is_temp_of",
           "clear_stale_temps", "normal_file_mode", "check_writable", "check_progress_folder", "check_not_link",
           "check_name_length", "read_progress_json", "other_progress_error", "fingerprint_differences",
           "fresh_progress_folder"]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Inputs = Mapping[str, Union[PathLike, Sequence[PathLike], None]]
"""Inputs of a command by the option that names them: {"--ckpt": path, "--cache": [path, ...], "--x": None}."""


class OutputError(ValueError):
    """An output the command refuses to write; the message is one line naming the option and the path."""


def _abs(p: PathLike) -> Path:
    """Where `p` is, as the commands read and write it: links resolved, `~` taken literally (no command expands it:
    a shell does, before the command sees it)."""
    return Path(os.path.abspath(os.path.realpath(os.fspath(p))))


def _inputs(inputs: Optional[Inputs]) -> list[tuple[str, PathLike]]:
    out = []
    for label, value in (inputs or {}).items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        out += [(label, v) for v in values if v is not None and os.fspath(v) != ""]
    return out


def check_no_overlap(option: str, path: PathLike, inputs: Optional[Inputs], targets: Sequence[PathLike] = ()) -> None:
    """OutputError if the output `path` is an input or lies inside one, or if an input is, or lies inside,
    one of `targets` (what the command writes or replaces; default: `path` itself)."""
    out = _abs(path)
    written = [_abs(t) for t in targets] or [out]
    for label, value in _inputs(inputs):
        inp = _abs(value)
        if inp == out:
            raise OutputError(f"{option} {path} is the input {label} {value}: choose another output")
        if inp in out.parents:
            raise OutputError(f"{option} {path} lies inside the input {label} {value}: choose an output outside it")
        for t in written:
            if inp == t or t in inp.parents:
                raise OutputError(f"{option} {path} would overwrite the input {label} {value} (which lies inside "
                                  f"it): choose an output that does not hold it")


def check_writable(path: Path, option: str, given: Optional[PathLike] = None) -> None:
    """The nearest existing ancestor of `path` must be a folder we may create entries in. `given`: the path the
    option named, when `path` is the folder it goes into (a file's parent)."""
    shown = path if given is None else given
    for anc in [path, *path.parents]:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                raise OutputError(f"{option} {shown}: {anc} is a file, not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {shown}: cannot write into {anc} (permission denied)")
            return


def check_output_file(path: PathLike, option: str = "--output", inputs: Optional[Inputs] = None,
                      overwrite: bool = False) -> Path:
    """A file the command writes: not a folder, not an input; an existing one only with `overwrite`."""
    if os.fspath(path).endswith(("/", os.sep)):  # (Path drops it: the file would be written as the folder's name)
        raise OutputError(f"{option} {os.fspath(path)} ends in a slash, as a folder does: give a file name")
    p = given_output(path, option, file=True)
    check_name_length(p, option, temp=True)  # (first: a name past the limit fails even `exists`)
    check_no_overlap(option, p, inputs)
    if p.is_dir():
        raise OutputError(f"{option} {p} is a folder: give a file name")
    if p.exists() and not p.is_file():  # (--overwrite put a file in place of /dev/null, as root the system's)
        raise OutputError(f"{option} {p} is a device, a pipe or a socket, not a file, which --overwrite does not "
                          f"replace: give a file name")
    if (p.exists() or p.is_symlink()) and not overwrite:  # (a link to nothing is the user's too)
        raise OutputError(f"{option} {p} exists: pass --overwrite to replace it, or choose another file name")
    check_writable(p.parent, option, p)
    return p


def given_output(path: PathLike, option: str, file: bool = False) -> Path:
    """The output path given to `option` (a `file`'s, or a folder's); OutputError for an empty one (an unset variable
    in a script, `--output "$OUT"`), which Path reads as the current folder, and for one that starts with `~`
    (check_no_tilde)."""
    if os.fspath(path) == "":
        raise OutputError(f"{option} is empty: " + ("give a file name" if file else
                                                    "name the output (. for the current folder)"))
    check_no_tilde(path, option)
    return Path(path)


def check_no_tilde(path: PathLike, option: str) -> None:
    """OutputError for an output path whose first part is `~` or `~user`: only a shell expands it, where it starts
    a word, so in a config file, quoted, or after `=` (`--output=~/runs/a`) it stays literal and the command would
    write into a folder named `~` in the current folder (one that a later `rm -r ~...` to clean up would miss)."""
    from radar_train.inputs import unexpanded_home

    expanded = unexpanded_home(path)  # (of the path as given: Path drops the `./` of `./~`)
    if expanded is not None:
        given = os.fspath(path)
        hint = f"give {expanded}" if expanded != given else "give the full path"
        raise OutputError(f"{option} {given}: '~' is not expanded here (only a shell expands it, at the start of a "
                          f"word): {hint}, or ./{given} for a folder named '{given.split(os.sep)[0]}'")


def _folder_or_nothing(p: Path, option: str) -> None:
    """OutputError unless the output folder `p` is a folder or nothing (a file, or a link to nothing, is not)."""
    if p.is_symlink() and not p.exists():
        raise OutputError(f"{option} {p} is a link to nothing ({os.readlink(p)}): give a folder, or make the one it "
                          f"names")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {p} is an existing file: give a folder")


def _exists(p: Path) -> bool:
    try:
        return os.path.lexists(p)
    except OSError:  # (e.g. a name past the file system's limit)
        return False


def check_name_length(path: Path, option: str, temp: bool = False) -> None:
    """OutputError unless every name of `path` that does not exist yet fits the file system's limit on a name
    and, with `temp`, so does the temporary name a writer gives `path` itself (`temp_name`, the longest sibling
    it makes): else the command would fail after its checks, half-way through its work."""
    path = Path(os.path.abspath(path))
    existing = next((a for a in [path, *path.parents] if _exists(a)), Path(path.anchor))
    folder = existing if existing.is_dir() else existing.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    new = path.relative_to(existing).parts if existing != path else ()
    names = [(part, len(os.fsencode(part))) for part in new]
    if temp:
        longest = temp_name(path, "mode").name
        names.append((longest, len(os.fsencode(longest))))
    for name, n in names:
        if n > limit:
            what = (f"{len(os.fsencode(path.name))} bytes, {n} with the temporary name it is written under"
                    if name not in new else f"{name[:24]}… has {n} bytes")
            raise OutputError(f"{option} {path}: a name too long here ({what}; at most {limit}): choose a shorter one")


def check_output_dir(path: PathLike, writes: Sequence[str], option: str = "--output", inputs: Optional[Inputs] = None,
                     overwrite: bool = False) -> Path:
    """A folder the command writes the entries `writes` into (other entries are left alone): not a file, not
    inside an input and holding none; entries that exist already are replaced only with `overwrite`."""
    p = given_output(path, option)
    check_name_length(p, option, temp=False)
    _folder_or_nothing(p, option)
    check_no_overlap(option, p, inputs, [p / w for w in writes])
    existing = [w for w in writes if (p / w).exists() or (p / w).is_symlink()]
    # an entry named as a file (eval.json) that is a folder, or one named as a folder (restored) that is a file:
    # not an earlier run's output but something else of that name, never replaced, even with overwrite
    other_kind = [w for w in existing if (p / w).is_dir() != (not Path(w).suffix)]
    if other_kind:
        w = other_kind[0]
        kind = "a folder" if (p / w).is_dir() else "a file"
        raise OutputError(f"{option} {p}: {w} is {kind}, not what this command writes there: it is never replaced "
                          f"(not with --overwrite either); move it away, or choose another folder")
    if existing and not overwrite:
        raise OutputError(f"{option} {p} already holds {', '.join(existing)} (an earlier run's output): pass "
                          f"--overwrite to replace them, or choose another folder")
    check_writable(p, option)
    for w in existing:  # (moved aside and removed after the run's work: refused then, with a raw errno)
        check_removable(p / w, option, p)
    return p


def check_removable(entry: Path, option: str, shown: PathLike) -> None:
    """OutputError if the folder `entry`, which the command replaces, may not be moved or emptied (permission
    denied on it)."""
    if entry.is_dir() and not entry.is_symlink() and not os.access(entry, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {shown}: cannot replace {entry.name}/ (permission denied on it, which its "
                          f"replacement needs): make it writable, or choose another folder")


def check_replace_dir(path: PathLike, is_ours: Callable[[Path], bool], what: str, option: str = "--output",
                      inputs: Optional[Inputs] = None, overwrite: bool = False) -> Path:
    """A folder written as a whole (`what`, e.g. "an adapter folder"): absent or empty; an existing `what`
    (`is_ours`) only with `overwrite`; any other folder, or a file, is refused even with `overwrite`."""
    p = given_output(path, option)
    check_name_length(p, option, temp=True)
    recover_replaced(p)  # the user's folder, if a killed replace left it hidden
    _folder_or_nothing(p, option)
    check_no_overlap(option, p, inputs)
    if p.is_dir() and any(p.iterdir()):
        if not is_ours(p):
            raise OutputError(f"{option} {p} is a folder that is not {what} and not empty: it is never replaced; "
                              f"choose a new or empty folder")
        if not overwrite:
            raise OutputError(f"{option} {p} already holds {what}: pass --overwrite to replace it, or choose "
                              f"another folder")
        check_removable(p, option, p)
    if p.is_dir() and os.path.ismount(p.resolve()):  # (renamed into place: EBUSY after the work; a link to one too)
        raise OutputError(f"{option} {p} is a mount point, and {what} is written beside it and renamed into place "
                          f"whole, which a mount point cannot be: give a folder inside it")
    check_writable(p, option)
    return p


def check_resume_dir(path: PathLike, marker: str, what: str, option: str = "--output",
                     inputs: Optional[Inputs] = None) -> Path:
    """A folder a command creates or resumes (`what`, recognised by its file `marker`): absent, empty or
    holding `marker`; the caller then checks that the marker is its own."""
    p = given_output(path, option)
    check_name_length(p, option, temp=False)
    _folder_or_nothing(p, option)
    check_no_overlap(option, p, inputs)
    # a concurrent creator's temporary marker (temp_name, linked to MARKER a moment later) is not foreign
    if p.is_dir() and not (p / marker).is_file() and any(not is_temp_of(e, marker) for e in p.iterdir()):
        raise OutputError(f"{option} {p} is a folder that is not empty and holds no {marker}, so it is not {what}: "
                          f"choose a new or empty folder (only {what} is resumed)")
    check_writable(p, option)
    return p


def check_progress_folder(output: PathLike, folder: PathLike, command: str, is_ours: Callable[[str], bool]) -> bool:
    """Whether a command's progress folder (`folder`, OUTPUT/<name>-progress/, the run a stopped one goes on from)
    exists. OutputError (one line) for one that is not a folder, or holds an entry that is not `is_ours` (hidden
    entries aside: a killed writer's temporaries), so is not the command's."""
    folder = Path(folder)
    if not (folder.exists() or folder.is_symlink()):
        return False
    check_not_link(output, folder, command)
    if not folder.is_dir():
        raise OutputError(f"--output {output}: {folder} is not a folder of {command} progress: move it away, or "
                          f"choose another folder")
    foreign = sorted(e.name for e in folder.iterdir() if not is_ours(e.name) and not e.name.startswith("."))
    if foreign:
        raise OutputError(f"--output {output}: {folder} holds {', '.join(foreign[:3])}, so it is not {command} "
                          f"progress: move it away, or choose another folder")
    return True


def check_not_link(output: PathLike, folder: PathLike, command: str) -> None:
    """OutputError (one line) for a progress folder that is a link: a run never makes one, and clearing or
    replacing it would act on the link, not on the folder it names."""
    if Path(folder).is_symlink():
        raise OutputError(f"--output {output}: {folder} is a link, not a folder of {command} progress (a run never "
                          f"makes one): move it away, or choose another folder")


def fingerprint_differences(stored: Mapping, wanted: Mapping, prefix: str = "") -> list[str]:
    """`PREFIXkey: stored vs wanted` for each setting of two fingerprints (a progress folder's settings and this
    run's) that differs; a key only one side has counts as differing. Both sides' mappings are shown with sorted
    keys (the saved side was read back sorted: the two orders differed, hard to compare by eye)."""
    return [f"{prefix}{k}: {json.dumps(stored.get(k), sort_keys=True)} vs {json.dumps(wanted.get(k), sort_keys=True)}"
            for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def fresh_progress_folder(folder: PathLike, settings_name: str, settings: Mapping) -> None:
    """Start a progress folder anew: what an earlier run left there goes, then the run's settings file (whole)."""
    folder = Path(folder)
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_text_atomic(folder / settings_name, json.dumps(dict(settings), indent=1) + "\n")


def read_progress_json(path: PathLike, output: PathLike, folder: PathLike, command: str) -> dict:
    """A progress folder's JSON object (its settings); OutputError (one line) for one that cannot be read."""
    try:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise OutputError(f"--output {output}: {path} cannot be read as {command} progress ({e}): remove {folder} "
                          f"to start over") from None
    return stored


def other_progress_error(output: PathLike, command: str, diffs: Sequence[str], of: str = "with other settings",
                         what: str = "settings") -> OutputError:
    """The refusal of a progress folder of another run (`diffs`: `key: saved vs now` lines) without --overwrite.
    Progress saved by another radar_train code or torch (the pipeline's fingerprint: `radar_train_code`, `torch`)
    cannot be continued by giving settings: the advice names the installation instead."""
    installation = any(d.split(":", 1)[0] in ("radar_train_code", "torch") for d in diffs)
    advice = ("it was saved by another radar_train or torch, whose outputs can differ: go on with that "
              "installation" if installation else f"give its {what} to go on with it")
    return OutputError(f"--output {output} holds the progress of a {command} run {of} ({'; '.join(diffs[:4])}"
                       f"{'; ...' if len(diffs) > 4 else ''}, saved vs now): {advice}, or pass --overwrite to start "
                       f"over (its progress goes)")


# ------------------------------------------------------------------------------ writers
def temp_name(path: PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden sibling of `path`: `.NAME.<kind>-<token>-<pid>-<host>` (the writing process in the name,
    so that a later run can tell a killed writer's leftovers from a running one's: clear_stale_temps)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{kind}-{uuid.uuid4().hex[:8]}-{os.getpid()}-{_host_tag()}")


def _host_tag() -> str:
    """This host's name as temporaries carry it (cut to 32 characters: a file name has at most 255 bytes)."""
    return socket.gethostname()[:32]


def is_temp_of(entry: PathLike, name: str, kind: str = "tmp") -> bool:
    """Whether `entry` is a `temp_name` of a sibling called `name`."""
    return Path(entry).name.startswith(f".{name}.{kind}-")


_WRITER = re.compile(r"^-[0-9a-f]{8}-(\d+)-(.+)$")


def another_live_process(host: str, pid: int) -> bool:
    """Whether `pid` on `host` is another process of this host that still runs (a pid in use again counts as
    running; another host's cannot be told from here, nor can this process's own: both False)."""
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _killed_writer(entry: Path, prefix: str) -> int | None:
    """The pid of the process of this host that wrote the temporary `entry` if it no longer runs; None when it
    still runs (or the pid is in use again), is this process, is another host's or cannot be read from the name
    (an older naming)."""
    m = _WRITER.match(entry.name[len(prefix):])
    if m is None or m.group(2) != _host_tag() or int(m.group(1)) == os.getpid():
        return None
    return None if another_live_process(socket.gethostname(), int(m.group(1))) else int(m.group(1))


def clear_stale_temps(folder: PathLike, name: str, kind: str = "tmp") -> list[Path]:
    """Remove the temporaries of `name` (temp_name's, file or folder) in `folder` whose writer was a process of
    this host that no longer runs: what a killed run left (a half-written WebDataset shard can be gigabytes).
    Those of running processes and of other hosts stay. Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = [e for e in folder.iterdir() if is_temp_of(e, name, kind)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if (pid := _killed_writer(entry, f".{name}.{kind}")) is None:
            continue
        _remove(entry)
        log.info("removed %s, left by a killed run (process %d)", entry, pid)
        removed.append(entry)
    return removed


def normal_file_mode(path: PathLike, like: Optional[PathLike] = None) -> None:
    """Give the file `path` the mode a plain open() would (0o666 less the umask), read from a fresh sibling
    file (no process-wide os.umask() round trip). `like`: the name the sibling is made for, when `path` is a
    temporary (whose own name would make the sibling's too long)."""
    probe = temp_name(path if like is None else like, "mode")
    probe.touch()
    try:
        os.chmod(path, probe.stat().st_mode & 0o666)
    finally:
        probe.unlink(missing_ok=True)


def make_folders(path: PathLike) -> list[Path]:
    """Create the folder `path` and its missing parents; the folders made, innermost first (for
    remove_made_folders when the command that made them fails before writing there)."""
    p = Path(path)
    made = [q for q in [p, *p.parents] if not q.exists()]
    p.mkdir(parents=True, exist_ok=True)
    return made


def remove_made_folders(made: Sequence[Path]) -> None:
    """Remove the folders of make_folders that are still empty, innermost first (up to the first that is not)."""
    for q in made:
        try:
            q.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def atomic_file(path: PathLike, temp_of: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; renamed onto `path` when the block succeeds, removed otherwise. An
    OSError that names no file (a write into an open file: a full disk, a quota) is raised naming `path`.
    `temp_of`: the name the temporary is made (and a killed writer's cleared) under, when `path`'s own name
    must not appear in it (default: `path`'s name)."""
    p = Path(path)
    made = make_folders(p.parent)
    key = p.name if temp_of is None else temp_of
    clear_stale_temps(p.parent, key)
    tmp = temp_name(p.with_name(key))
    try:
        yield tmp
        os.replace(tmp, p)
        made = []
    except Exception as e:  # (one naming no file, or the hidden temporary, is said of `path`, the name the user gave)
        os_error = e if isinstance(e, OSError) else safetensors_os_error(e)
        if os_error is None or not os_error.strerror or \
                (os_error.filename is not None and os.fspath(os_error.filename) != os.fspath(tmp)):
            raise
        raise OSError(os_error.errno, os_error.strerror, str(staged_name(p.parent, p.name))) from e
    finally:
        tmp.unlink(missing_ok=True)
        remove_made_folders(made)  # (the folders made for a file that failed)


def safetensors_os_error(e: BaseException) -> Optional[OSError]:
    """The operating-system error in safetensors' own (`Error while serializing: I/O error: No space left on device
    (os error 28)`, a SafetensorError naming no file), None for any other error."""
    m = re.search(r"\(os error (\d+)\)", str(e)) if type(e).__name__ == "SafetensorError" else None
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def write_text_atomic(path: PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_entries(out_dir: PathLike, entries: Sequence[str], overwrite: bool = True,
                   option: str = "--output") -> Iterator[Path]:
    """Yield a temporary folder inside `out_dir` to write `entries` into; at the end each entry written there
    replaces its namesake in `out_dir`, and an entry not written this time goes from `out_dir` (an earlier
    run's, e.g. restored/ of a run with an adapter, would stand beside this run's output as if it were
    part of it). `entries` are checked beforehand with check_output_dir (so an existing one needs
    --overwrite). On failure the temporary folder goes, and so does `out_dir` if this call created it and
    it is still empty; nothing of `out_dir` is touched. The swap is renames only: every earlier entry first
    leaves (into the temporary folder, removed with it), then this run's come in, so a run killed during the
    swap leaves entries of one run only in `out_dir` (before, each old entry was deleted just before its new
    namesake came in: a kill there left the new vanilla/ beside the old run's grid and report). Without
    `overwrite`, an entry that appeared in `out_dir` since the check is not replaced (`swap_entries`)."""
    out = Path(out_dir)
    made = make_folders(out)
    ok = False
    try:
        clear_stale_temps(out, "staging")
        stage = temp_name(out / "staging")
        stage.mkdir()
        try:
            yield stage
            swap_entries(stage, out, entries, overwrite, option)
            ok = True
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        if not ok:
            remove_made_folders(made)


_ENDING_HOOKS: list[Callable[[], None]] = []  # swaps_end_command's


@contextlib.contextmanager
def swaps_end_command(hook: Callable[[], None]) -> Iterator[None]:
    """In the block, a swap of finished outputs into place (staged_entries, replace_dir) calls `hook` as it starts:
    for a command whose last step that swap is (radar-eval's report, an export's adapter, the toy tools' and
    radar-bench tradeoff's reports), the CLI's `signals_ignored_to_the_end`. A SIGTERM or Ctrl-C held back during
    the swap was then handled as it came, ending a command whose outputs were in place with status 143 or 130."""
    _ENDING_HOOKS.append(hook)
    try:
        yield
    finally:
        _ENDING_HOOKS.remove(hook)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM held back while a few renames put finished outputs in place, then handled as
    they would have been (KeyboardInterrupt, a command's SIGTERM handler): cut off between the renames, a swap
    left the earlier outputs in a folder its cleanup removed, and the new ones too. Only in the main thread (where
    Python runs signal handlers); elsewhere a no-op. Inside `swaps_end_command`, its hook runs first."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    for hook in list(_ENDING_HOOKS):
        hook()
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, frame: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):  # (each once, in the order they came)
            signal.raise_signal(sig)


def check_none_appeared(out: PathLike, entries: Sequence[str], option: str = "--output") -> None:
    """OutputError when one of `entries` is in `out`, which the command's check found without them (no
    --overwrite): another run writing into the same folder finished first, and its output stays."""
    out = Path(out)
    appeared = [n for n in entries if (out / n).exists() or (out / n).is_symlink()]
    if appeared:
        raise OutputError(f"{option} {out}: {', '.join(appeared)} appeared while this run ran (another run writing "
                          f"into the same folder?): not replaced, and this run's output is not written; pass "
                          f"--overwrite to replace them, or choose another folder")


def swap_entries(stage: PathLike, out: PathLike, entries: Sequence[str], overwrite: bool = True,
                 option: str = "--output") -> None:
    """Each of `entries` in the folder `stage` (inside `out`) replaces its namesake in `out`, and an entry `stage`
    lacks goes from `out` (staged_entries' swap: renames only, every earlier entry first leaves into
    `stage`/.replaced, which the caller removes with `stage`). Ctrl-C and SIGTERM wait for the swap's end
    (`signals_deferred`); a rename that fails (a lost mount) puts back what had moved, earlier entries included.
    Without `overwrite` (the command's check found none of `entries` in `out`), OutputError and nothing moved
    when one is there now: another run writing into the same folder finished first, and its output stays."""
    stage, out = Path(stage), Path(out)
    if not overwrite:
        check_none_appeared(out, entries, option)
    replaced = stage / ".replaced"
    replaced.mkdir()
    left, came = [], []
    with signals_deferred():
        try:
            for name in entries:
                if (out / name).exists() or (out / name).is_symlink():
                    os.replace(out / name, replaced / name)
                    left.append(name)
            for name in entries:
                if (stage / name).exists():
                    os.replace(stage / name, out / name)
                    came.append(name)
        except BaseException:
            for name in came:
                os.replace(out / name, stage / name)
            for name in left:
                os.replace(replaced / name, out / name)
            raise


def recover_replaced(path: PathLike) -> Path | None:
    """Undo what a replace_dir killed between its two renames left: the previous folder only at its
    `.NAME.old-*` name and nothing at `path`. That folder (the newest, if several) goes back to `path`; a
    killed writer's `.old` beside a `path` that exists (killed after the swap, or while removing it) goes.
    Returns the folder put back, if any."""
    p = Path(path)
    try:
        olds = [e for e in p.parent.iterdir() if is_temp_of(e, p.name, "old")
                and _killed_writer(e, f".{p.name}.old") is not None]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not olds or p.exists() or p.is_symlink():
        clear_stale_temps(p.parent, p.name, "old")
        return None
    back = max(olds, key=lambda e: e.lstat().st_mtime)
    back.rename(p)
    log.warning("put %s back at %s: a run replacing it was killed before it could", back.name, p)
    clear_stale_temps(p.parent, p.name, "old")
    return back


@contextlib.contextmanager
def temporary_folder(prefix: str = "radar-", dir: Optional[PathLike] = None) -> Iterator[Path]:
    """A temporary folder removed on the way out, also when an interrupt left zarr's writer threads writing into it
    for a moment (tempfile.TemporaryDirectory's removal then failed, 'Directory not empty': a status-1 error line
    instead of the interrupt's, or the folder left behind): removed again while anything is left, for up to 2 s."""
    import tempfile
    import time

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    try:
        yield path
    finally:
        for _ in range(20):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
            time.sleep(0.1)


def replace_dir(tmp: PathLike, out: PathLike) -> Path:
    """Put the finished folder `tmp` at `out` (a sibling), replacing what is there (checked beforehand). A kill
    between the two renames leaves the previous folder at `.NAME.old-*`: recover_replaced puts it back."""
    tmp, out = Path(tmp), Path(out)
    old = None
    with signals_deferred():  # (a Ctrl-C between the renames left nothing at `out` until a later run put it back)
        if out.exists() or out.is_symlink():
            old = temp_name(out, "old")
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
            raise
    if old is not None:
        _remove(old)
    return out


@contextlib.contextmanager
def naming(path: PathLike) -> Iterator[None]:
    """An OSError of the block that names no file (a write into an open file: a full disk, a quota) raised naming
    `path`: the file the user will look for (a staged entry's final name, not its hidden temporary)."""
    try:
        yield
    except OSError as e:
        if e.strerror and (e.filename is None or _hidden_temporary(e.filename)):  # (an inode quota: a create fails)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


_TEMPORARY = re.compile(r"^\..+\.[a-z]+-[0-9a-f]{8}-\d+-")  # temp_name's `.NAME.<kind>-<token>-<pid>-<host>`


def _hidden_temporary(filename) -> bool:
    """Whether `filename` is a temp_name of ours or lies in one (a staging folder)."""
    if not isinstance(filename, (str, bytes, os.PathLike)):  # (a file descriptor)
        return False
    return any(_TEMPORARY.match(part) for part in Path(os.fsdecode(filename)).parts)


def staged_name(folder: PathLike, name: str) -> Path:
    """Where the entry `name` written into `folder` ends up: beside the staging folder of `staged_entries`
    (`folder` itself otherwise)."""
    folder = Path(folder)
    return folder.parent / name if is_temp_of(folder, "staging") else folder / name


def write_report(folder: PathLike, stem: str, report: Mapping, indent: int = 1) -> None:
    """A measurement's two text files in `folder` (a staging folder of `staged_entries`): `stem`.json, the
    report without its `markdown` entry, and `stem`.md, that markdown. A failed write names the file."""
    folder = Path(folder)
    data = {k: v for k, v in report.items() if k != "markdown"}
    with naming(staged_name(folder, f"{stem}.json")):
        (folder / f"{stem}.json").write_text(json.dumps(data, indent=indent, default=str) + "\n", encoding="utf-8")
    with naming(staged_name(folder, f"{stem}.md")):
        (folder / f"{stem}.md").write_text(report["markdown"] + "\n", encoding="utf-8")
