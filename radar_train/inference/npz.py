"""Generated samples as the `.npz` that OpenAI's guided-diffusion evaluator reads (the published FID / sFID /
IS / precision / recall of VAR, FastVAR and RADAR come from it): one array `arr_0`, uint8 (N, H, W, 3).

The images are streamed into the archive batch by batch, so 50,000 samples at 256 px (9.8 GB) never sit in memory;
the file is written under a temporary name and renamed when the last sample is in, so an interrupted run leaves no
truncated `.npz`. The archive is the zip that `np.savez` writes (one stored, uncompressed member `arr_0.npy`, zip64
records), written here rather than through `zipfile`, because `zipfile` cannot go on with a member of an archive
it did not write itself: the resume below does.

Resuming (radar-fid's progress folder, its workers' merge): `sync()` makes the images written so far durable, and
a writer opened with `resume_at=K` on the unfinished file of an interrupted run keeps its first K images in place
and goes on after them: it reads them once for the member's checksum, then cuts the file after them (the images
after them, which the interrupted run wrote but had not yet counted, go). Nothing is copied, so a resume needs no
free disk and no writing of what is there, however often a run is preempted. The file changes only once it has
been read whole, so a writer whose start is cut off (a kill, a SIGTERM raised anywhere in it) leaves it to the
next one. (An earlier version copied the K images into a new file and left the interrupted one as
`NAME.partial.old` until then; a writer takes such an `.old` up as the unfinished file.)
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from radar_train.outputs import naming

__all__ = ["NpzImageWriter", "unfinished_exists"]

MEMBER = "arr_0.npy"
_BLOCK = 1 << 26  # bytes per read when copying or checksumming

# zip records (APPNOTE.TXT 4.3): the member's local header (30 bytes, its name, then a zip64 extra field holding its
# sizes), its data, the central directory's one entry, then the zip64 end record, its locator and the end record
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64 = struct.Struct("<4sLQL")
_END = struct.Struct("<4s4H2LH")
_LOCAL_HEADER = b"PK\x03\x04"
_ZIP64_LOCAL_EXTRA = struct.Struct("<2H2Q")  # id 1, 16 bytes: size, compressed size
_ZIP64_CENTRAL_EXTRA = struct.Struct("<2H3Q")  # id 1, 24 bytes: size, compressed size, the local header's offset
_ZIP64_VERSION = 45  # the zip version that reads zip64 records
_UNIX = 3
_FULL32 = 0xFFFFFFFF  # "see the zip64 record"
# the member's MS-DOS (time, date): 1980-01-01 00:00 (zipfile's default), so that the same samples make the same
# bytes (a merged archive equals a single run's)
_STAMP = (0, 1 << 5 | 1)


def _member_data(src, path: Path) -> tuple[int, int]:
    """Position `src` (an archive NpzImageWriter writes, finished or not) after the npy magic of its member; the
    offset where the member's data begins, and the length of its local header's extra field."""
    head = src.read(30)
    if len(head) < 30 or head[:4] != _LOCAL_HEADER:
        raise ValueError(f"{path}: not a samples archive (no zip header)")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    if src.read(name_len) != MEMBER.encode():
        raise ValueError(f"{path}: its first member is not {MEMBER}")
    src.seek(30 + name_len + extra_len)
    start = src.tell()
    np.lib.format.read_magic(src)
    return start, extra_len


def _copy(src, write: Callable[[bytes], object], length: int, count: int, path: Path) -> None:
    """`length` bytes from `src`'s position through `write`, in blocks; ValueError if `src` ends first."""
    if os.fstat(src.fileno()).st_size < src.tell() + length:
        raise ValueError(f"{path}: holds fewer than the {count} images its progress records")
    while length:
        chunk = src.read(min(length, _BLOCK))
        if not chunk:
            raise ValueError(f"{path}: ends before its {count}th image")
        write(chunk)
        length -= len(chunk)


def _local_header(size: int, crc: int) -> bytes:
    name = MEMBER.encode()
    return (_LOCAL.pack(_LOCAL_HEADER, _ZIP64_VERSION, 0, 0, 0, *_STAMP, crc, _FULL32, _FULL32, len(name),
                        _ZIP64_LOCAL_EXTRA.size)
            + name + _ZIP64_LOCAL_EXTRA.pack(1, 16, size, size))


def _directory(size: int, crc: int, start: int) -> bytes:
    """The records after the member's data, which ends at `start`: its central directory entry and the end
    records (those of `zipfile` for a zip64 archive of one member)."""
    name = MEMBER.encode()
    entry = (_CENTRAL.pack(b"PK\x01\x02", _ZIP64_VERSION, _UNIX, _ZIP64_VERSION, 0, 0, 0, *_STAMP, crc, _FULL32,
                           _FULL32, len(name), _ZIP64_CENTRAL_EXTRA.size, 0, 0, 0, 0o600 << 16, _FULL32)
             + name + _ZIP64_CENTRAL_EXTRA.pack(1, 24, size, size, 0))
    end64 = start + len(entry)
    return (entry
            + _END64.pack(b"PK\x06\x06", _END64.size - 12, _ZIP64_VERSION, _ZIP64_VERSION, 0, 0, 1, 1, len(entry),
                          start)
            + _LOCATOR64.pack(b"PK\x06\x07", 0, end64, 1)
            + _END.pack(b"PK\x05\x06", 0, 0, 1, 1, len(entry), min(start, _FULL32), 0))


def unfinished_exists(partial: str | os.PathLike) -> bool:
    """Whether the unfinished archive `partial` is there for a writer with `resume_at`: as itself, or as the
    `.old` that a cut-off start of an earlier version's writer left (which the next writer takes up)."""
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
        self._crc, self._size = 0, 0
        self.written = 0
        if not resume_at:
            self._file = open(self._tmp, "w+b")
            self._file.write(_local_header(0, 0))  # (its sizes and checksum once they are known)
            self._start = self._file.tell()
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, self._header())
            self._append(header.getvalue())
            return
        old = self._tmp.with_name(self._tmp.name + ".old")
        if old.is_file():  # (an earlier version's writer, cut off as it started: the archive is the .old)
            os.replace(old, self._tmp)
        self._file = open(self._tmp, "r+b")
        try:
            self._resume(resume_at)
        except BaseException:
            self._file.close()
            raise

    def _header(self) -> dict:
        return {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                "shape": (self.num_images, self.size, self.size, 3)}

    def _append(self, data: bytes) -> None:
        with naming(self._tmp):  # (a full disk: said of the unfinished file, not of no file)
            self._file.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)

    def _resume(self, count: int) -> None:
        """Go on after the npy header and the first `count` images of the unfinished archive: their checksum
        from one read of them, then the file cut after them."""
        if count > self.num_images:
            raise ValueError(f"{self._tmp}: cannot keep {count} images of an archive of {self.num_images}")
        f = self._file
        self._start, extra = _member_data(f, self._tmp)
        if extra != _ZIP64_LOCAL_EXTRA.size:
            raise ValueError(f"{self._tmp}: not a samples archive this writer made (a local zip extra field of "
                             f"{extra} bytes)")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        want = self._header()
        if shape != want["shape"] or fortran or dtype != np.uint8:
            raise ValueError(f"{self._tmp}: holds {dtype} {shape}, not uint8 {want['shape']}")
        length = f.tell() - self._start + count * self.image_bytes
        f.seek(self._start)
        crc = 0

        def checksum(chunk: bytes) -> None:
            nonlocal crc
            crc = zlib.crc32(chunk, crc)

        _copy(f, checksum, length, count, self._tmp)
        f.truncate(self._start + length)  # (the images after them: written, never counted)
        self._crc, self._size, self.written = crc, length, count

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
            _copy(src, self._append, count * self.image_bytes, count, Path(path))
        self.written += count

    def write(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"{self.path}: {images.dtype} images of shape {tuple(images.shape)}, expected uint8 "
                             f"(B, 3, {self.size}, {self.size})")
        if self.written + images.shape[0] > self.num_images:
            raise ValueError(f"{self.path}: more than the {self.num_images} images it was opened for")
        self._append(images.permute(0, 2, 3, 1).contiguous().cpu().numpy().tobytes())
        self.written += images.shape[0]

    def sync(self) -> None:
        """The images written so far, on disk (flushed and fsynced)."""
        with naming(self._tmp):
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> Path:
        """Finish the archive and put it at `path`; ValueError if fewer images than announced were written."""
        if self.written != self.num_images:
            self.discard()
            raise ValueError(f"{self.path}: {self.written} of {self.num_images} images written")
        f = self._file
        with naming(self._tmp):
            f.write(_directory(self._size, self._crc, self._start + self._size))
            f.seek(0)
            f.write(_local_header(self._size, self._crc))
        self.sync()  # (whole on disk before it takes the name)
        f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def reopen(self) -> None:
        """Put a closed archive back under its unfinished name, for a later writer with `resume_at` (which keeps
        its images: the finished archive is read as an unfinished one)."""
        os.replace(self.path, self._tmp)

    def release(self) -> None:
        """Close the unfinished file and leave it where it is, for a later writer with `resume_at` (which reads
        only its headers and its first images)."""
        try:
            self._file.close()  # (closed even where its flush fails)
        except OSError:  # (a full disk: the next writer keeps what its progress counted, if it is there)
            pass

    def discard(self) -> None:
        """Drop the unfinished archive."""
        self.release()
        self._tmp.unlink(missing_ok=True)
