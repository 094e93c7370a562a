"""Generated samples as the `.npz` that OpenAI's guided-diffusion evaluator reads (the published FID / sFID /
IS / precision / recall of VAR, FastVAR and RADAR come from it): one array `arr_0`, uint8 (N, H, W, 3).

The images are streamed into the archive batch by batch (an uncompressed zip member, as `np.savez` writes it),
so 50,000 samples at 256 px (9.8 GB) never sit in memory; the file is written under a temporary name and
renamed when the last sample is in, so an interrupted run leaves no truncated `.npz`.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["NpzImageWriter"]


class NpzImageWriter:
    """Write `num_images` uint8 images of `size` x `size` pixels into `path` as `arr_0` (N, H, W, 3), in the
    order given, through `write` (uint8 tensors (B, 3, H, W), as RadarPipeline.compare gives them); `close`
    renames the file into place once all of them are in (and refuses a short count)."""

    def __init__(self, path: str | os.PathLike, num_images: int, size: int):
        self.path, self.num_images, self.size = Path(path), int(num_images), int(size)
        self.written = 0
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (self.num_images, self.size, self.size, 3)}
        np.lib.format.write_array_header_1_0(self._member, header)

    def write(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"{self.path}: {images.dtype} images of shape {tuple(images.shape)}, expected uint8 "
                             f"(B, 3, {self.size}, {self.size})")
        if self.written + images.shape[0] > self.num_images:
            raise ValueError(f"{self.path}: more than the {self.num_images} images it was opened for")
        self._member.write(images.permute(0, 2, 3, 1).contiguous().cpu().numpy().tobytes())
        self.written += images.shape[0]

    def close(self) -> Path:
        """Finish the archive and put it at `path`; ValueError if fewer images than announced were written."""
        self._member.close()
        self._zip.close()
        if self.written != self.num_images:
            self.discard()
            raise ValueError(f"{self.path}: {self.written} of {self.num_images} images written")
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Drop the unfinished archive."""
        if not self._member.closed:
            self._member.close()
        self._zip.close()
        self._tmp.unlink(missing_ok=True)
