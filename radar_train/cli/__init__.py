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


# only in a console script's process (radar-eval, ...): a program importing the package keeps its own hook
if os.path.basename(sys.argv[0] if sys.argv else "").startswith("radar-"):
    sys.excepthook = _interrupted_while_starting
