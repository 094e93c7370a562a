"""code_digest: the identity of radar_train's code that progress folders record (the version string stays the same
between releases)."""
from __future__ import annotations

import shutil

import radar_train.code_identity as ci


def _digest_of(monkeypatch, package) -> str:
    monkeypatch.setattr(ci, "PACKAGE", package)
    ci.code_digest.cache_clear()
    try:
        return ci.code_digest()
    finally:
        ci.code_digest.cache_clear()


def test_the_digest_follows_every_source_file_and_only_those(tmp_path, monkeypatch):
    installed = ci.code_digest()
    copy = tmp_path / "radar_train"
    shutil.copytree(ci.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    assert _digest_of(monkeypatch, copy) == installed  # where the package lies does not count
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "stray.py").write_text("x = 1\n")
    (copy / "notes.txt").write_text("not code\n")
    assert _digest_of(monkeypatch, copy) == installed
    sampling = copy / "sampling.py"
    sampling.write_text(sampling.read_text() + "\n# one comment more\n")
    edited = _digest_of(monkeypatch, copy)
    assert edited != installed
    (copy / "sampling.py").rename(copy / "sampling2.py")  # the same bytes under another name
    assert _digest_of(monkeypatch, copy) not in (installed, edited)
    assert len(installed) == 16 and set(installed) <= set("0123456789abcdef")
