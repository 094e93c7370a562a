"""NpzImageWriter: the archive np.load and zipfile read (the format of np.savez), and its resume (radar-fid's
progress and its workers' merge), which goes on in the unfinished file itself: no copy, no second file, and a writer
whose start is cut off anywhere (SIGTERM raises in the main thread wherever it is) leaves the archive to the next
writer."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import radar_train.inference.npz as npz
from radar_train.inference.npz import NpzImageWriter


class _Cut(BaseException):
    """Stands for radar-fid's Stopped, raised by SIGTERM's handler at any bytecode."""


def _images(value: int, n: int = 2) -> torch.Tensor:
    return torch.full((n, 3, 2, 2), value, dtype=torch.uint8)


def _random(seed: int, n: int, size: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def test_the_archive_is_what_np_savez_writes_and_zipfile_checks_it(tmp_path):
    images = _random(0, 5)
    w = NpzImageWriter(tmp_path / "a.npz", 5, 4)
    w.write(images[:2])
    w.write(images[2:])
    assert w.close() == tmp_path / "a.npz"
    np.savez(tmp_path / "b.npz", _hwc(images))
    with zipfile.ZipFile(tmp_path / "a.npz") as ours, zipfile.ZipFile(tmp_path / "b.npz") as theirs:
        assert ours.testzip() is None  # (every member's checksum)
        assert [(i.filename, i.file_size, i.CRC, i.compress_type, i.date_time) for i in ours.infolist()] == \
            [(i.filename, i.file_size, i.CRC, i.compress_type, i.date_time) for i in theirs.infolist()]
        assert ours.read("arr_0.npy") == theirs.read("arr_0.npy")
    with np.load(tmp_path / "a.npz") as f:
        assert f.files == ["arr_0"] and f["arr_0"].dtype == np.uint8 and np.array_equal(f["arr_0"], _hwc(images))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # (the unfinished file renamed)


def test_the_same_images_make_the_same_bytes(tmp_path):
    """A merged archive is a single run's byte for byte: no time stamp or other state of the writer in it."""
    images = _random(1, 4)
    a = NpzImageWriter(tmp_path / "a.npz", 4, 4)
    a.write(images)
    a.close()
    b = NpzImageWriter(tmp_path / "b.npz", 4, 4, partial=tmp_path / "b.partial")
    b.write(images[:1])
    b.sync()
    b.release()
    b = NpzImageWriter(tmp_path / "b.npz", 4, 4, partial=tmp_path / "b.partial", resume_at=1)
    b.write(images[1:])
    b.close()
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_a_resume_goes_on_in_the_unfinished_file_without_copying_it(tmp_path, monkeypatch):
    """Five images written and synced, the writer never closed (a killed run): a writer resumed at 3 keeps the first
    three where they are (the same file, its first bytes never written again), drops the other two, and the archive
    reads back whole and checks out."""
    first, second = _random(2, 5), _random(3, 4)
    partial = tmp_path / "s.npz.partial"
    w = NpzImageWriter(tmp_path / "s.npz", 7, 4, partial=partial)
    w.write(first)
    w.sync()
    inode, size = partial.stat().st_ino, partial.stat().st_size
    writes = []
    monkeypatch.setattr(NpzImageWriter, "_append", lambda self, data: writes.append(len(data)))
    resumed = NpzImageWriter(tmp_path / "s.npz", 7, 4, partial=partial, resume_at=3)
    monkeypatch.undo()
    assert writes == []  # nothing copied
    assert partial.stat().st_ino == inode and partial.stat().st_size == size - 2 * 48  # (cut after the third)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz.partial"]
    assert resumed.written == 3
    resumed.write(second)
    resumed.close()
    with zipfile.ZipFile(tmp_path / "s.npz") as z:
        assert z.testzip() is None
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], _hwc(torch.cat([first[:3], second])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_an_unfinished_file_too_short_or_of_another_shape_is_refused_and_left_as_it_was(tmp_path):
    w = NpzImageWriter(tmp_path / "t.npz", 7, 4, partial=tmp_path / "t.partial")
    w.write(_random(4, 2))
    w.release()
    before = (tmp_path / "t.partial").read_bytes()
    with pytest.raises(ValueError, match="fewer than the 3 images"):
        NpzImageWriter(tmp_path / "t.npz", 7, 4, partial=tmp_path / "t.partial", resume_at=3)
    with pytest.raises(ValueError, match=r"not uint8 \(7, 5, 5, 3\)"):
        NpzImageWriter(tmp_path / "t.npz", 7, 5, partial=tmp_path / "t.partial", resume_at=1)
    with pytest.raises(ValueError, match="cannot keep 8 images of an archive of 7"):
        NpzImageWriter(tmp_path / "t.npz", 7, 4, partial=tmp_path / "t.partial", resume_at=8)
    (tmp_path / "u.partial").write_bytes(b"not a zip" * 10)
    with pytest.raises(ValueError, match="u.partial: not a samples archive"):
        NpzImageWriter(tmp_path / "u.npz", 7, 4, partial=tmp_path / "u.partial", resume_at=1)
    assert (tmp_path / "t.partial").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.partial", "u.partial"]


@pytest.mark.parametrize("where", ["_member_data", "_copy", "crc32"])
def test_a_resume_cut_off_as_it_starts_leaves_the_archive_to_the_next_one(tmp_path, monkeypatch, where):
    path, partial = tmp_path / "x.npz", tmp_path / "x.npz.partial"
    w = NpzImageWriter(path, 4, 2, partial=partial)
    w.write(_images(7))
    w.write(_images(8, 1))  # (written, never counted: the resume drops it)
    w.sync()
    w.release()  # (an interrupted run: 2 images counted)

    def cut(*args, **kwargs):
        raise _Cut

    with monkeypatch.context() as m:
        m.setattr(npz.zlib if where == "crc32" else npz, where, cut)
        with pytest.raises(_Cut):
            NpzImageWriter(path, 4, 2, partial=partial, resume_at=2)
    w = NpzImageWriter(path, 4, 2, partial=partial, resume_at=2)
    w.write(_images(9))
    w.close()
    arr = np.load(path)["arr_0"]
    assert arr.shape == (4, 2, 2, 3) and (arr[:2] == 7).all() and (arr[2:] == 9).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_the_old_file_an_earlier_versions_cut_off_start_left_is_taken_up(tmp_path):
    """The earlier writer (zipfile's) moved the unfinished archive aside as NAME.old before copying from it, and
    left it there when its start was cut off: such an archive, cut after its last image as that writer left it,
    is the one a resume goes on in."""
    partial = tmp_path / "x.npz.partial"
    images = _random(5, 3, size=2)
    with open(partial.with_name(partial.name + ".old"), "w+b") as f:
        z = zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        member = z.open("arr_0.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": (5, 2, 2, 3)})
        member.write(_hwc(images).tobytes())
        member.close()
        end = f.tell()
        z.close()
        f.truncate(end)
    assert npz.unfinished_exists(partial)
    w = NpzImageWriter(tmp_path / "x.npz", 5, 2, partial=partial, resume_at=2)
    w.write(_random(6, 3, size=2))
    w.close()
    assert np.array_equal(np.load(tmp_path / "x.npz")["arr_0"], _hwc(torch.cat([images[:2], _random(6, 3, size=2)])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_a_short_archive_is_refused_at_close_and_goes(tmp_path):
    w = NpzImageWriter(tmp_path / "s.npz", 3, 2)
    w.write(_images(1))
    with pytest.raises(ValueError, match="2 of 3 images written"):
        w.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="more than the 3 images"):
        NpzImageWriter(tmp_path / "s.npz", 3, 2).write(_images(1, 4))


def test_release_on_a_full_disk_raises_nothing_and_leaves_the_file(tmp_path):
    """The file's close fails (its flush on a full disk): release says nothing (the caller's error is the one that
    counts) and leaves the unfinished file to the next writer."""
    w = NpzImageWriter(tmp_path / "s.npz", 3, 2)
    w.write(_images(1))

    class Full:
        def __init__(self, f):
            self.f = f

        def close(self):
            self.f.close()
            raise OSError(28, "No space left on device")

    w._file = Full(w._file)
    w.release()
    assert (tmp_path / ".s.npz.partial").is_file()


def test_a_write_or_close_on_a_full_disk_names_the_unfinished_file(tmp_path):
    """(radar-fid: `error: radar-fid: No space left on device (errno 28)`, naming no file.)"""
    import errno

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    w = NpzImageWriter(tmp_path / "a.npz", 4, 2)
    w.write(_images(1))
    real, w._file = w._file, FullFile(w._file)
    with pytest.raises(OSError) as e:
        w.write(_images(2))
    assert e.value.filename == str(tmp_path / ".a.npz.partial") and e.value.errno == errno.ENOSPC
    w.written = 4  # (past close's count check: its own writes fail)
    with pytest.raises(OSError) as e:
        w.close()
    assert e.value.filename == str(tmp_path / ".a.npz.partial") and e.value.errno == errno.ENOSPC
    real.close()
