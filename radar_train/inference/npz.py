"""Generated samples as the `.npz` that OpenAI's guided-diffusion evaluator reads (the published FID / sFID /
IS / precision / recall of VAR, FastVAR and RADAR come from it): one array `arr_0`, uint8 (N, H, W, 3).

The images are streamed into the archive batch by batch (an uncompressed zip member, as `np.savez` writes it),
so 50,000 samples at 256 px (9.8 GB) never sit in memory; the file is written under a temporary name and
renamed when the last sample is in, so an interrupted run leaves no truncated `.npz`.

Resuming (radar-fid's progress folder): `sync()` makes the images written so far durable, and a writer opened
with `resume_at=K` on the unfinished file of an interrupted run keeps its first K images: they are copied into
a fresh archive (the interrupted one has no zip directory, and its member's checksum is unknown), and the
images after them, which the interrupted run wrote but had not yet counted, are dropped. The interrupted file
waits beside it as `NAME.partial.old` until the copy is synced; a writer whose start is cut off (a kill, a
SIGTERM raised anywhere in it) leaves that file, and the next one starts from it again.
"""
from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["NpzImageWriter", "unfinished_exists"]

MEMBER = "arr_0.npy"
_LOCAL_HEADER = b"PK\x03\x04"  # a zip local file header: 30 bytes, then the name and the extra field


def _member_data(src, path: Path) -> int:
    """Position `src` (an archive NpzImageWriter writes, finished or not) after the npy magic of its member; the
    offset where the member's data begins."""
    head = src.read(30)
    if len(head) < 30 or head[:4] != _LOCAL_HEADER:
        raise ValueError(f"{path}: not a samples archive (no zip header)")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    if src.read(name_len) != MEMBER.encode():
        raise ValueError(f"{path}: its first member is not {MEMBER}")
    src.seek(30 + name_len + extra_len)
    start = src.tell()
    np.lib.format.read_magic(src)
    return start


def _copy(src, dst, length: int, count: int, path: Path) -> None:
    """`length` bytes from `src`'s position into `dst`, in blocks; ValueError if `src` ends first."""
    if os.fstat(src.fileno()).st_size < src.tell() + length:
        raise ValueError(f"{path}: holds fewer than the {count} images its progress records")
    while length:
        chunk = src.read(min(length, 1 << 26))
        if not chunk:
            raise ValueError(f"{path}: ends before its {count}th image")
        dst.write(chunk)
        length -= len(chunk)


def unfinished_exists(partial: str | os.PathLike) -> bool:
    """Whether the unfinished archive `partial` is there for a writer with `resume_at`: as itself, or as the
    `.old` a writer's start that was cut off left (which the next writer takes up)."""
    partial = Path(partial)
    return partial.is_file() or partial.with_name(partial.name + ".old").is_file()


class NpzImageWriter:
    """Write `num_images` uint8 images of `size` x `size` pixels into `path` as `arr_0` (N, H, W, 3), in the
    order given, through `write` (uint8 tensors (B, 3, H, W), as RadarPipeline.compare gives them); `close`
    renames the file into place once all of them are in (and refuses a short count). `partial`: the unfinished
    file (default: `.NAME.partial` beside `path`); `resume_at`: keep the first that many images of an existing
    `partial` and go on from there."""

    def __init__(self, path: str | os.PathLike, num_images: int, size: int, partial: Optional[str | os.PathLike] = None,
                 resume_at: int = 0):
        self.path, self.num_images, self.size = Path(path), int(num_images), int(size)
        self._tmp = Path(partial) if partial is not None else self.path.with_name(f".{self.path.name}.partial")
        self.image_bytes = self.size * self.size * 3
        old = None
        if resume_at:
            old = self._tmp.with_name(self._tmp.name + ".old")
            if old.is_file():  # (an earlier writer's start cut off: the archive is the .old, whatever the copy holds)
                os.replace(old, self._tmp)
            os.replace(self._tmp, old)
        self._file = open(self._tmp, "w+b")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open(MEMBER, "w", force_zip64=True)
        self.written = 0
        if old is None:
            np.lib.format.write_array_header_1_0(self._member, self._header())
            return
        try:
            self._copy_prefix(old, resume_at)
            self.sync()  # (the copy on disk before its source goes)
        except BaseException:
            self.discard()
            os.replace(old, self._tmp)  # as it was: the next attempt finds it again
            raise
        old.unlink()

    def _header(self) -> dict:
        return {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                "shape": (self.num_images, self.size, self.size, 3)}

    def _copy_prefix(self, old: Path, count: int) -> None:
        """The npy header and the first `count` images of the interrupted archive `old`, into this one."""
        if count > self.num_images:
            raise ValueError(f"{self._tmp}: cannot keep {count} images of an archive of {self.num_images}")
        with open(old, "rb") as src:
            start = _member_data(src, self._tmp)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(src)
            want = self._header()
            if shape != want["shape"] or fortran or dtype != np.uint8:
                raise ValueError(f"{self._tmp}: holds {dtype} {shape}, not uint8 {want['shape']}")
            length = src.tell() - start + count * self.image_bytes
            src.seek(start)
            _copy(src, self._member, length, count, self._tmp)
        self.written = count

    def append_from(self, path: str | os.PathLike, count: int) -> None:
        """The `count` images of another (finished or unfinished) archive of this image size `path` (a worker's
        share), after those written so far."""
        if self.written + count > self.num_images:
            raise ValueError(f"{self.path}: more than the {self.num_images} images it was opened for")
        with open(path, "rb") as src:
            _member_data(src, Path(path))
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(src)
            if shape != (count, self.size, self.size, 3) or fortran or dtype != np.uint8:
                raise ValueError(f"{path}: holds {dtype} {shape}, not uint8 {(count, self.size, self.size, 3)}")
            _copy(src, self._member, count * self.image_bytes, count, Path(path))
        self.written += count

    def write(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"{self.path}: {images.dtype} images of shape {tuple(images.shape)}, expected uint8 "
                             f"(B, 3, {self.size}, {self.size})")
        if self.written + images.shape[0] > self.num_images:
            raise ValueError(f"{self.path}: more than the {self.num_images} images it was opened for")
        self._member.write(images.permute(0, 2, 3, 1).contiguous().cpu().numpy().tobytes())
        self.written += images.shape[0]

    def sync(self) -> None:
        """The images written so far, on disk (flushed and fsynced)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> Path:
        """Finish the archive and put it at `path`; ValueError if fewer images than announced were written."""
        self._member.close()
        self._zip.close()
        self._file.close()
        if self.written != self.num_images:
            self.discard()
            raise ValueError(f"{self.path}: {self.written} of {self.num_images} images written")
        os.replace(self._tmp, self.path)
        return self.path

    def release(self) -> None:
        """Close the unfinished file and leave it where it is, for a later writer with `resume_at` (which reads
        only its zip header and its first images): cut after the last image written, as a killed run's ends."""
        end = None
        try:
            self._member.close()
            end = self._file.tell()  # (the member's close leaves the file at the end of its data)
            self._zip.close()  # (its directory, cut off below: closed, the zip writes nothing when collected)
            self._file.truncate(end)
        except (OSError, ValueError):  # (a full disk; the zip refusing to close around a failed member)
            pass
        self._file.close()

    def discard(self) -> None:
        """Drop the unfinished archive."""
        self.release()
        self._tmp.unlink(missing_ok=True)
