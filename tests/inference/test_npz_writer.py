"""NpzImageWriter's resume (radar-fid's progress and its workers' merge): a writer whose start is cut off anywhere
(SIGTERM raises in the main thread wherever it is) leaves the interrupted archive to the next writer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import radar_train.inference.npz as npz
from radar_train.inference.npz import NpzImageWriter


class _Cut(BaseException):
    """Stands for radar-fid's Stopped, raised by SIGTERM's handler at any bytecode."""


def _images(value: int, n: int = 2) -> torch.Tensor:
    return torch.full((n, 3, 2, 2), value, dtype=torch.uint8)


@pytest.mark.parametrize("where", ["ZipFile", "_copy_prefix"])
def test_a_resume_cut_off_as_it_starts_leaves_the_archive_to_the_next_one(tmp_path, monkeypatch, where):
    path, partial = tmp_path / "x.npz", tmp_path / "x.npz.partial"
    w = NpzImageWriter(path, 4, 2, partial=partial)
    w.write(_images(7))
    w.sync()
    w.release()  # (an interrupted run: 2 images counted)

    def cut(*args, **kwargs):
        raise _Cut

    with monkeypatch.context() as m:  # (after the archive was moved aside for the copy)
        m.setattr(npz.zipfile, "ZipFile", cut) if where == "ZipFile" else m.setattr(NpzImageWriter, where, cut)
        with pytest.raises(_Cut):
            NpzImageWriter(path, 4, 2, partial=partial, resume_at=2)
    w = NpzImageWriter(path, 4, 2, partial=partial, resume_at=2)
    w.write(_images(9))
    w.close()
    arr = np.load(path)["arr_0"]
    assert arr.shape == (4, 2, 2, 3) and (arr[:2] == 7).all() and (arr[2:] == 9).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
