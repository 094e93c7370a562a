"""The run folder's lock: one `radar-train fit` at a time writes into a run folder.

Two fits started at once into the same (absent or empty) run folder both passed the folder's checks and both
ran to the end, leaving it mixed: config.yaml of one, final/ of the other, checkpoints of both. A fit now
takes RUN/.fit.lock (global rank 0 only, after its checks, before it writes anything) and removes it when it
ends, however it ends (finished, failed, stopped by SIGTERM or Ctrl-C, requeued by SLURM). The file is
created with O_CREAT | O_EXCL (atomic, also on NFS v3+) and holds JSON {host, pid, slurm_job_id, slurm_restart,
started}.

A lock that exists is refused while its owner may be alive (`error: ... is in use by radar-train fit
HOST:PID ...`) and taken over when its owner is known to be over:

- an earlier run of our own SLURM job: the same job id and a lower SLURM_RESTART_COUNT (a requeued job's
  previous incarnation, on this or another node, is over; two fits of one allocation, e.g. two srun steps or
  two shells of one salloc, are not: they share the job id and the restart count);
- this host, and its pid no longer runs (a fit killed with kill -9, or one of this same process);
- another host, and the lock's mtime is older than STALE_AFTER_S: its owner renews the mtime every
  HEARTBEAT_S from a daemon thread, so a lock not renewed for that long is a crashed or lost host's.

A takeover moves the dead owner's file aside (a rename: one of two fits taking it over at once wins) and
creates the lock again with O_EXCL, so two fits never both hold it.

radar-fid takes a lock of its own the same way (OUTPUT/.fid.lock: `RunLock(..., name, command)`).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from radar_train.outputs import (OutputError, another_live_process, clear_stale_temps, is_temp_of, make_folders,
                                 remove_made_folders, temp_name)

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "HEARTBEAT_S", "STALE_AFTER_S", "RunLock", "is_lock_entry", "check_not_in_use",
           "acquire", "release_held"]

LOCK_NAME = ".fit.lock"
HEARTBEAT_S = 60.0  # how often the owner renews the lock's mtime
STALE_AFTER_S = 600.0  # another host's lock not renewed for this long is a dead owner's (10 heartbeats missed)
_ASIDE = "aside"  # temp_name kind of a dead owner's lock moved aside during a takeover
_ATTEMPTS = 5

_held: list["RunLock"] = []  # the locks this process holds (release_held)


def is_lock_entry(entry: os.PathLike | str) -> bool:
    """Whether a run folder's entry is the lock or a dead owner's lock moved aside (not part of the run)."""
    name = Path(entry).name
    return name == LOCK_NAME or is_temp_of(name, LOCK_NAME, _ASIDE)


def _owner() -> dict:
    """This process as a lock's content."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
            "slurm_restart": _restart_count(os.environ.get("SLURM_RESTART_COUNT")),
            "started": datetime.now().astimezone().isoformat(timespec="seconds")}


def _restart_count(value) -> int:
    """SLURM_RESTART_COUNT as a number (unset, as in a job's first run, or unreadable: 0)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _earlier_run_of_our_job(owner: dict) -> bool:
    """Whether the lock was taken by an earlier run of this process's SLURM job (requeued since)."""
    ours = os.environ.get("SLURM_JOB_ID") or None
    return (ours is not None and str(owner.get("slurm_job_id")) == ours
            and _restart_count(owner.get("slurm_restart")) < _restart_count(os.environ.get("SLURM_RESTART_COUNT")))


def _read(path: Path) -> Optional[tuple[Optional[dict], os.stat_result]]:
    """(the lock's owner, or None when its content is not a lock's; its stat), or None when there is no lock."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):  # (no lock; or RUN, or a folder above it, is a file: said later)
        return None
    except OSError as e:  # a link looping on itself: no run's lock (`acquire` says so)
        if e.errno == errno.ELOOP:
            return None
        raise
    try:
        owner = json.loads(text)
    except ValueError:
        owner = None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or not isinstance(owner.get("host"), str):
        owner = None
    return owner, st


def _is_over(owner: Optional[dict], st: os.stat_result) -> bool:
    """Whether the fit that holds a lock (owner, stat) is known to have ended (module docstring)."""
    age = time.time() - st.st_mtime
    if owner is None:  # unreadable (a fit killed between creating and writing it): only its age tells
        return age > STALE_AFTER_S
    if _earlier_run_of_our_job(owner):
        return True
    if owner["host"] == socket.gethostname():
        return not another_live_process(owner["host"], owner["pid"])
    return age > STALE_AFTER_S


def _in_use(option: str, root: Path, owner: Optional[dict], st: os.stat_result, name: str = LOCK_NAME,
            command: str = "radar-train fit") -> OutputError:
    """The one-line refusal naming the lock's live owner."""
    if owner is None:
        return OutputError(f"{option} {root} is in use by {command} (its lock {root / name} cannot be "
                           f"read; renewed {time.time() - st.st_mtime:.0f} s ago): wait for it to end, or choose "
                           f"another folder")
    job = f" (SLURM job {owner['slurm_job_id']})" if owner.get("slurm_job_id") else ""
    return OutputError(f"{option} {root} is in use by {command} {owner['host']}:{owner['pid']}{job} since "
                       f"{owner.get('started', '?')}: wait for it to end, or choose another folder")


def check_not_in_use(root: os.PathLike | str, option: str, name: str = LOCK_NAME,
                     command: str = "radar-train fit") -> None:
    """OutputError if RUN's lock is held by a fit that may still run (reads only: a fit refuses there before
    its other checks, whose messages would be about a folder another fit is writing); `name` and `command`: another
    command's lock, as `acquire` takes them (checked before that command's start line and model loading)."""
    root = Path(root)
    found = _read(root / name)
    if found is not None and not _is_over(*found):
        raise _in_use(option, root, *found, name=name, command=command)


class RunLock:
    """RUN/.fit.lock held by this process: `acquire` (refused while a live fit holds it), `release`. Another
    command that writes into a folder over hours (radar-fid) takes its own lock the same way: `name` (the lock
    file's name) and `command` (how a refusal names the owner)."""

    def __init__(self, root: os.PathLike | str, option: str, name: str = LOCK_NAME, command: str = "radar-train fit"):
        self.root, self.option, self.name, self.command = Path(root), option, name, command
        self.path = self.root / name
        self._ino: Optional[int] = None
        self._pid = os.getpid()
        self._created: list[Path] = []  # the folders acquire made (removed at release while still empty)
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def acquire(self) -> "RunLock":
        """Create the lock, taking a dead owner's over; OutputError (one line) while a live fit holds it."""
        self._created = make_folders(self.root)
        if self.path.is_symlink():  # (dangling or looping, it can be neither created nor read: say so)
            self._remove_made_folders()
            raise OutputError(f"{self.option} {self.root}: its lock {self.path} is a link, which no run makes: remove "
                              f"it, or choose another folder")
        clear_stale_temps(self.root, self.name, _ASIDE)  # what a takeover killed midway left
        for _ in range(_ATTEMPTS):
            if self._create():
                self._start_heartbeat()
                return self
            found = _read(self.path)
            if found is None:  # its owner ended meanwhile
                continue
            if not _is_over(*found):
                self._remove_made_folders()
                raise _in_use(self.option, self.root, *found, self.name, self.command)
            self._move_aside(found[1])
            log.info("took over %s of %s %s (no longer running)", self.path, self.command,
                     "?" if found[0] is None else f"{found[0]['host']}:{found[0]['pid']}")
        self._remove_made_folders()
        raise OutputError(f"{self.option} {self.root}: could not take its lock {self.path} (other runs of "
                          f"{self.command} starting there at once kept taking it): wait for them to end, or "
                          f"choose another folder")

    def _remove_made_folders(self) -> None:
        """Remove the folders acquire made that are still empty (a fit that failed before writing leaves none)."""
        remove_made_folders(self._created)
        self._created = []

    def _create(self) -> bool:
        """O_CREAT | O_EXCL the lock with our content; False when it exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(_owner()) + "\n")
            f.flush()
            self._ino = os.fstat(f.fileno()).st_ino
        self._pid = os.getpid()
        _held.append(self)
        return True

    def _move_aside(self, judged: os.stat_result) -> None:
        """Move the dead owner's lock (the file `judged`) out of the way. If another fit replaced it meanwhile
        (the file moved is not the one judged), put that one back."""
        aside = temp_name(self.path, _ASIDE)
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if os.stat(aside).st_ino != judged.st_ino:
            try:
                os.link(aside, self.path)  # back, unless yet another lock is there now
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="radar-fit-lock", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Renew the lock's mtime every HEARTBEAT_S while it is ours (another host's fit reads its age)."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if self._ours():
                    os.utime(self.path)
            except OSError:
                pass

    def _ours(self) -> bool:
        """Whether the lock file is still the one this process created."""
        try:
            return os.getpid() == self._pid and os.stat(self.path).st_ino == self._ino
        except OSError:
            return False

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (not in a forked child); then the
        folders acquire made, if nothing was written there."""
        if os.getpid() != self._pid:
            return
        self._stop.set()
        if self._ours():
            self.path.unlink(missing_ok=True)
        self._ino = None
        self._remove_made_folders()
        if self in _held:
            _held.remove(self)


def acquire(root: os.PathLike | str, option: str, name: str = LOCK_NAME, command: str = "radar-train fit") -> RunLock:
    """Take RUN/.fit.lock (or `name`) for this process (RunLock.acquire); release_held gives it back."""
    return RunLock(root, option, name, command).acquire()


def release_held() -> None:
    """Release every run lock this process holds (at the end of a fit, however it ended)."""
    for lock in list(_held):
        try:
            lock.release()
        except OSError as e:  # a folder gone or read-only by then: the next fit judges the lock by its owner
            log.warning("could not remove %s: %s", lock.path, e)
