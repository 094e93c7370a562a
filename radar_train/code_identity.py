"""What identifies the code that makes a sample: `code_digest()`, the sha256 of radar_train's own Python files.

`radar_train.__version__` names a release and stays the same between releases (and in a checkout at every
commit), so progress saved by one radar_train and continued by another with the same version string would mix
the samples of two codes: they can differ (round-off in a changed kernel, a fixed bug). The digest changes with
any change of the package's source, which is what a run that goes on from saved samples has to match."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 (hex, the first 16 digits) over the path (relative, POSIX) and bytes of every `*.py` file of the
    installed radar_train package, in path order; computed once per process (a few ms)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py"), key=lambda p: p.relative_to(PACKAGE).as_posix()):
        rel = path.relative_to(PACKAGE).as_posix()
        if "__pycache__" in rel.split("/"):
            continue
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]
