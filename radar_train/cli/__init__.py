"""Command-line entry points (radar-cache, radar-train, radar-generate, radar-eval, radar-bench, ...)."""
from __future__ import annotations

import os
import sys


def _interrupted_while_starting(kind, value, tb, _default=sys.excepthook) -> None:
    """A Ctrl-C while a console command still imports its modules (torch, Lightning: the first seconds), before
    its main() handles Ctrl-C, printed a traceback of 14-57 lines: one line, as main() says it."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
        return
    _default(kind, value, tb)


def _current_folder_gone() -> bool:
    """Whether the shell's current folder was deleted (or moved) under it: a command then failed with a bare
    `[Errno 2] No such file or directory`, or as torch loaded, with oneMKL's 'FATAL ERROR: Cannot load
    libtorch_cpu.so' (a broken install, by the look of it), though every path it was given was absolute."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


# only in a console script's process (radar-eval, ...): a program importing the package keeps its own hook
if os.path.basename(sys.argv[0] if sys.argv else "").startswith("radar-"):
    sys.excepthook = _interrupted_while_starting
    if _current_folder_gone():  # (said before the command's own imports: torch is the one that fails)
        print("error: the current folder no longer exists (deleted or moved while the shell was in it): cd to an "
              "existing folder", file=sys.stderr)
        raise SystemExit(2)
