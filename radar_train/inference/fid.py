"""FID / Inception Score of generated samples: vanilla, accelerated and accelerated + adapter.

For every run the pipeline generates the same `num_samples` samples (sample i has class i mod num_classes
and seed base_seed + i; 50,000 samples of a 1000-class model = 50 per class), feeds the uint8 images to a
local Inception feature extractor and reports

- FID of each run against reference statistics (``--reference``: a ``.npz`` with ``mu`` / ``sigma``, or a
  folder of images whose statistics are computed with the same extractor), when given;
- FID of accelerated and accelerated + adapter against the *vanilla* samples of the same classes and seeds:
  a proxy that needs no real data, always available (vanilla vs vanilla is 0 by construction);
- the Inception Score of each run, when a logits module is given;
- the share of the FID gap closed by the adapter, (FID_acc - FID_acc+PAA) / (FID_acc - FID_vanilla)
  (methods.md §5.2), for both kinds of FID.

Nothing is downloaded: the Inception network is a file you provide.

Feature-extractor contract
--------------------------
``--inception FILE`` is a TorchScript archive (``torch.jit.save``) or a ``torch.export`` archive
(``torch.export.save``, ``.pt2``; exported with a dynamic batch dimension) of a module that

- takes uint8 RGB images, shape (N, 3, H, W), values 0..255, at the generator's resolution
  (256 or 512 for VAR) — the module does its own resizing (e.g. to 299×299) and normalisation;
- returns float features of shape (N, D), e.g. the 2048-d pool features of Inception-v3.

``--inception_logits FILE`` (optional) follows the same input contract and returns (N, C) class logits
(e.g. the 1008 logits of the TF Inception graph); the Inception Score is computed from their softmax
(torchmetrics ``InceptionScore``, splits shuffled with a fixed seed). Without it IS is skipped.

No weights ship with this package. To make such a file, take an Inception-v3 port you trust (the FID ports
of pytorch-fid or torch-fidelity reproduce the TensorFlow graph used by the papers' evaluators more closely
than torchvision's ImageNet classifier), wrap it in a module whose forward converts the uint8 batch to float,
resizes and normalises it the way that port expects and returns the pool features (or the logits), then
``torch.jit.save(torch.jit.trace(wrapper.eval(), example_uint8_batch), "inception_pool.pt")``
(or ``torch.jit.script``; with torch >= 2.10, where TorchScript is deprecated, ``torch.export.export`` with
``dynamic_shapes`` on the batch dimension and ``torch.export.save(..., "inception_pool.pt2")``). Record which
port and weights the file holds.

Protocol caveats (methods.md §5.2)
----------------------------------
- Paper numbers (VAR, FastVAR, RADAR, CoDe) are 50,000 samples (50 per class) evaluated by OpenAI's
  guided-diffusion evaluator (its TensorFlow Inception graph) against ``VIRTUAL_imagenet256_labeled.npz`` /
  ``VIRTUAL_imagenet512.npz``. Numbers from this module are internal comparisons: a different Inception
  port (weights, resizing, normalisation) changes FID and IS, so they are comparable to the papers only if
  your module reproduces that graph's features, and comparable among themselves only with the same file.
- The reference ``mu`` / ``sigma`` must come from the same extractor as the samples: the guided-diffusion
  reference batch's statistics were computed with its TF graph, so pairing them with another port's
  features gives a number without meaning. A folder of reference images avoids that mismatch.
- FID is biased upwards at small sample counts (and covariances are rank-deficient below D samples):
  compare only numbers with the same ``num_samples``; the paper protocol uses 50,000.
- Compare runs only under the same sampler settings (cfg 1.5, top-k 900, top-p 0.96 in the VAR README),
  the same classes and seeds, the same model and the same acceleration settings; report the seeds.
- The vanilla-referenced FID uses paired samples (same classes and seeds); it measures how far
  acceleration moves the output distribution, not image quality, and has no counterpart in the papers.
"""
from __future__ import annotations

import json
import math
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from radar_train.models.checkpoint import file_sha256

__all__ = ["FidError", "GaussianStats", "load_inception", "reference_stats", "frechet_distance",
           "fid_gap_closed", "reference_key", "Tally", "evaluate_generation", "tally_samples", "merge_tallies",
           "fid_runs", "summarize", "inception_score", "markdown_report",
           "write_report", "file_sha256"]

PAPER_NUM_SAMPLES = 50_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FidError(ValueError):
    """A one-line problem with an input file or option."""


# ---------------------------------------------------------------------------------------------- extractor
def _archive_kind(path: Path) -> Optional[str]:
    """'torchscript', 'export' or None, from the zip archive's member names."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names):
        return "torchscript"
    return None


class _Extractor(nn.Module):
    """Runs a loaded feature / logits module and checks its output: float (N, D)."""

    def __init__(self, module: nn.Module, path: str, what: str):
        super().__init__()
        self.module, self.path, self.what = module, path, what
        self.dim: Optional[int] = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        try:
            out = self.module(images)
        except Exception as e:  # noqa: BLE001 - e.g. a network that wants float input: one line naming the file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise FidError(f"{self.what} {self.path}: failed on uint8 images {tuple(images.shape)} ({first}); it "
                           f"must take uint8 (N, 3, H, W) in 0..255 and resize and normalise itself") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0] \
                or not out.is_floating_point():
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FidError(f"{self.what} {self.path}: returned {got} for images {tuple(images.shape)}; "
                           f"expected float (N, D)")
        if self.dim is not None and out.shape[1] != self.dim:
            raise FidError(f"{self.what} {self.path}: returned {out.shape[1]} features, earlier {self.dim}")
        if not bool(torch.isfinite(out).all()):
            raise FidError(f"{self.what} {self.path}: returned non-finite values (NaN or inf) for images "
                           f"{tuple(images.shape)}; the statistics need finite features")
        self.dim = int(out.shape[1])
        return out.float()

    def probe(self, image_size: int, device: torch.device | str = "cpu") -> int:
        """Run the module once on two black uint8 images of the size it will be given, before any sampling;
        its output dimension (FidError, naming the file, if it fails or returns the wrong shape)."""
        self.to(device)
        with torch.no_grad():
            return int(self(torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8, device=device)).shape[1])


def load_inception(path: str, what: str = "--inception") -> _Extractor:
    """Load a local TorchScript (or torch.export) feature extractor onto the CPU, in eval mode.

    Contract: input uint8 images (N, 3, H, W) in 0..255 (the module resizes and normalises itself),
    output float (N, D) — pool features for FID, class logits for IS. See the module docstring for how to
    make such a file. Raises FileNotFoundError / FidError with one line naming the file."""
    p = Path(path)
    if p.is_dir():
        raise FidError(f"{what} {p}: is a folder, expected a TorchScript or torch.export file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p}: file not found")
    kind = _archive_kind(p)
    if kind is None:
        raise FidError(f"{what} {p}: not a TorchScript (torch.jit.save) or torch.export (.pt2) archive "
                       f"(a state dict or pickled model is not enough)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
            if kind == "torchscript":
                module = torch.jit.load(str(p), map_location="cpu")
            else:
                with open(p, "rb") as f:
                    module = torch.export.load(f).module()
    except Exception as e:  # noqa: BLE001 - any reader failure is one line naming the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise FidError(f"{what} {p}: cannot load the {kind} archive ({first})") from None
    try:
        module.eval()
    except Exception:  # noqa: BLE001 - some exported modules refuse train()/eval(); they are inference graphs
        pass
    for prm in module.parameters():
        prm.requires_grad_(False)
    return _Extractor(module, str(p), what)


# ---------------------------------------------------------------------------------------------- statistics
class GaussianStats:
    """Streaming mean and covariance of feature vectors, in float64: the sums on the device of the features given
    to `update` (no readback per batch), `mu` and `sigma` on the CPU."""

    def __init__(self, dim: Optional[int] = None):
        self.n = 0
        self._sum: Optional[torch.Tensor] = None
        self._outer: Optional[torch.Tensor] = None
        self._mu: Optional[torch.Tensor] = None
        self._sigma: Optional[torch.Tensor] = None
        if dim is not None:
            self._alloc(dim)

    def _alloc(self, dim: int, device: torch.device | str = "cpu") -> None:
        self._sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self._outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @classmethod
    def from_moments(cls, mu, sigma, n: Optional[int] = None) -> "GaussianStats":
        s = cls()
        s._mu = torch.as_tensor(np.asarray(mu), dtype=torch.float64)
        s._sigma = torch.as_tensor(np.asarray(sigma), dtype=torch.float64)
        s.n = int(n or 0)
        return s

    @classmethod
    def from_sums(cls, n: int, total: torch.Tensor, outer: torch.Tensor) -> "GaussianStats":
        """Statistics of `n` vectors from their sum (D,) and the sum of their outer products (D, D)."""
        s = cls()
        s.n, s._sum, s._outer = int(n), total.to("cpu", torch.float64), outer.to("cpu", torch.float64)
        return s

    @property
    def dim(self) -> Optional[int]:
        return int(self._mu.shape[0]) if self._mu is not None else (None if self._sum is None else self._sum.shape[0])

    def update(self, features: torch.Tensor) -> None:
        if self._mu is not None:
            raise RuntimeError("statistics given as moments cannot be updated")
        f = features.detach().to(torch.float64)
        if self._sum is None:
            self._alloc(f.shape[1], f.device)
        f = f.to(self._sum.device)  # (a no-op unless the sums were made elsewhere, e.g. GaussianStats(dim))
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.n += f.shape[0]

    @property
    def mu(self) -> torch.Tensor:
        return self._mu if self._mu is not None else self._sum.cpu() / self.n

    @property
    def sigma(self) -> torch.Tensor:
        if self._sigma is not None:
            return self._sigma
        if self.n < 2:
            raise FidError(f"a covariance needs at least 2 samples, got {self.n}")
        mu = self.mu
        return (self._outer.cpu() - self.n * torch.outer(mu, mu)) / (self.n - 1)

    def save(self, path: str | Path) -> Path:
        """An .npz with mu / sigma (the guided-diffusion reference layout), reusable as --reference."""
        np.savez(path, mu=self.mu.numpy(), sigma=self.sigma.numpy())
        return Path(path)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½), in float64.

    Tr((S1 S2)^½) is the sum of the square roots of the eigenvalues of S1^½ S2 S1^½ (similar to S1 S2, but
    symmetric positive semi-definite), so two symmetric eigen-decompositions replace a general matrix
    square root; tiny negative eigenvalues from round-off are clipped to 0."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise FidError(f"feature dimensions differ: mu {d} / {mu2.shape[0]}, "
                       f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_sqrt)


def _list(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "") if names else "none"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def reference_key(folder: str | Path, extractor_sha256: str, image_size: int) -> str:
    """What identifies the statistics of a folder of reference images: its image files (relative path, size,
    modification time), the extractor's sha256 and the size the images are brought to, hashed (a resumed
    radar-fid reuses statistics of that key)."""
    import hashlib

    root = Path(folder)
    h = hashlib.sha256(f"{extractor_sha256}\nsize {image_size}".encode())
    for f in _image_files(root):
        st = f.stat()
        h.update(f"\n{f.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


@torch.no_grad()
def reference_stats(path: str, features: Optional[_Extractor] = None, batch_size: int = 64,
                    device: torch.device | str = "cpu", image_size: Optional[int] = None) -> GaussianStats:
    """Reference statistics: an .npz with `mu` (D,) and `sigma` (D, D) (the guided-diffusion reference
    batch layout), or a folder of PNG/JPEG images (searched recursively) whose statistics are computed with
    `features`, each image brought to image_size × image_size first (the generator's: `center_crop_resize`, as
    the guided-diffusion reference batches were made; None: as they are). Errors are one line naming the file."""
    p = Path(path)
    if p.is_dir():
        if features is None:
            raise FidError(f"--reference {p}: a folder of images needs the --inception extractor")
        from radar_train.images import load_rgb

        files = _image_files(p)
        if len(files) < 2:
            raise FidError(f"--reference {p}: needs at least 2 images (*.png, *.jpg), found {len(files)}")
        stats, pending = GaussianStats(), {}
        features.to(device)

        def flush(key):
            stats.update(features(torch.stack(pending.pop(key)).to(device)))

        for f in files:
            try:
                t = load_rgb(f, image_size)
            except Exception as e:  # noqa: BLE001
                raise FidError(f"--reference {f}: not a readable image ({str(e).splitlines()[0][:120]})") from None
            pending.setdefault(tuple(t.shape), []).append(t)  # equal sizes batch together
            if len(pending[tuple(t.shape)]) >= batch_size:
                flush(tuple(t.shape))
        for key in list(pending):
            flush(key)
        return stats
    if not p.is_file():
        raise FileNotFoundError(f"--reference {p}: file or folder not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"mu", "sigma"} <= keys:
                raise FidError(f"--reference {p}: no {' / '.join(k for k in ('mu', 'sigma') if k not in keys)} "
                               f"array (keys: {_list(sorted(keys))}); expected an .npz with mu (D,) "
                               f"and sigma (D, D) as in the guided-diffusion reference batches, or a folder of images")
            mu, sigma = z["mu"], z["sigma"]
    except FidError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is one line naming the file
        raise FidError(f"--reference {p}: not a readable .npz ({str(e).splitlines()[0][:120]})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise FidError(f"--reference {p}: mu {mu.shape} / sigma {sigma.shape} are not (D,) / (D, D)")
    try:
        finite = bool(np.isfinite(mu).all() and np.isfinite(sigma).all())
    except TypeError:  # not numbers at all
        finite = False
    if not finite:
        raise FidError(f"--reference {p}: mu / sigma hold values that are not finite numbers (NaN, inf or another "
                       f"type): damaged reference statistics")
    problem = _not_a_covariance(mu, sigma)
    if problem:
        raise FidError(f"--reference {p}: {problem}: damaged reference statistics")
    return GaussianStats.from_moments(mu, sigma)


def _not_a_covariance(mu: np.ndarray, sigma: np.ndarray) -> str:
    """Why (mu, sigma) are not a mean and a covariance matrix, or "": complex values (whose imaginary part the FID
    would drop), a sigma that is not symmetric or has a negative eigenvalue (a FID of such a sigma can come out
    negative). Up to float rounding: relative 1e-5 of sigma's largest entry / eigenvalue."""
    if np.iscomplexobj(mu) or np.iscomplexobj(sigma):
        return "mu / sigma are complex, not real"
    s = sigma.astype(np.float64)
    scale = float(np.abs(s).max())
    asym = float(np.abs(s - s.T).max())
    if asym > 1e-5 * scale:
        return f"sigma is not symmetric (|sigma - sigma^T| up to {asym:.3g}), not a covariance matrix"
    eig = np.linalg.eigvalsh((s + s.T) / 2)
    if eig.size and eig[0] < -1e-5 * max(float(np.abs(eig).max()), 1e-300):
        return f"sigma has a negative eigenvalue ({eig[0]:.3g}), not a covariance matrix"
    return ""


# ---------------------------------------------------------------------------------------------- evaluation
def inception_score_parts(num_samples: int, splits: int) -> int:
    """The number of parts the Inception Score averages over: parts of ceil(n / splits) samples (as
    `torch.chunk(splits)` makes them), which can be fewer than `splits` when `splits` does not divide n."""
    size = -(-num_samples // splits)
    return -(-num_samples // size)


def sample_count_notes(num_samples: int, dim: int) -> list[str]:
    """What the sample count means for FID (stated in the report)."""
    notes = []
    if num_samples <= dim:  # n samples give a covariance of rank n - 1 at most
        notes.append(f"num_samples {num_samples} < feature dimension {dim} + 1: the covariances are rank-deficient "
                     f"and FID is strongly biased")
    if num_samples < PAPER_NUM_SAMPLES:
        notes.append(f"{num_samples} samples (the paper protocol uses {PAPER_NUM_SAMPLES}): FID is biased upwards "
                     f"at small sample counts; compare only numbers with the same num_samples")
    return notes


def fid_gap_closed(acc: Optional[float], restored: Optional[float], vanilla: Optional[float]) -> Optional[float]:
    """Share of the FID gap closed, (FID_acc - FID_acc+PAA) / (FID_acc - FID_vanilla) (methods.md §5.2);
    None when a value is missing or accelerated and vanilla FID are equal."""
    if acc is None or restored is None or vanilla is None or abs(acc - vanilla) < 1e-12:
        return None
    return (acc - restored) / (acc - vanilla)


def official_noise_note(batch_size: int) -> str:
    """What sampling.noise official means for the numbers: each batch draws from one generator seeded with its
    first sample's seed (RadarPipeline._noise_keys), so they are reproducible, but only at the same batch size."""
    return (f"sampling.noise is official: each batch of {batch_size} draws from one generator seeded with its first "
            f"sample's seed (the official sampler's g_seed), so the numbers are reproducible at the same --batch_size, "
            f"but a sample depends on the batch it is drawn in (another --batch_size gives other samples, and sample "
            f"i is not the image of its own class and seed alone, as with per_sample noise)")


@dataclass(frozen=True)
class Tally:
    """Every run's measures over the first `done` samples: the feature sums of its FID statistics (float64) and
    its IS logits (one float32 tensor per batch), on the device the Inception networks ran on (no readback after
    each batch, which would keep the host from queueing the next one; they go to the CPU when saved, merged or
    summarized). A batch makes a new Tally, assigned whole, so that an interruption anywhere leaves the tally of
    the last complete batch (radar-fid saves it)."""

    done: int = 0
    sums: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # run -> (sum, outer)
    logits: Mapping[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def stats(self, run: str) -> GaussianStats:
        s, outer = self.sums[run]
        return GaussianStats.from_sums(self.done, s, outer)


def _advance(tally: Tally, features: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], n: int) -> Tally:
    """The tally after a batch of `n` samples with these features and logits (run -> (n, D) / (n, C))."""
    sums = dict(tally.sums)
    for run, f in features.items():
        f = f.detach().to(torch.float64)  # (where it is: see Tally)
        if run in sums:
            s, outer = sums[run]  # (on the CPU after a resume: moved once)
            sums[run] = (s.to(f.device) + f.sum(0), outer.to(f.device) + f.T @ f)
        else:
            sums[run] = (f.sum(0), f.T @ f)
    kept = {run: tally.logits.get(run, ()) + (lg.detach().float(),) for run, lg in logits.items()}
    return Tally(tally.done + n, sums, {**tally.logits, **kept})


def inception_score(logits: torch.Tensor, splits: int) -> dict:
    """IS from class logits (N, C) as the original evaluator computes it (Salimans et al.'s code, which
    guided-diffusion's evaluator calls on parts of 5,000): the samples in order, in parts of ceil(N / splits)
    (`inception_score_parts`), each part's exp(mean KL(p(y|x) || p(y))) with p(y) the part's mean; the mean and
    the (population) standard deviation over the parts. float64. (torchmetrics' InceptionScore shuffles the
    samples before it splits them, which moves the mean.)"""
    logp = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for part in logp.split(-(-logp.shape[0] // splits)):
        marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])  # log p(y) over the part
        kl = (part.exp() * (part - marginal)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return {"mean": float(scores.mean()), "std": float(scores.std(unbiased=False))}


@torch.no_grad()
def evaluate_generation(pipe, features: Optional[_Extractor], logits: Optional[_Extractor] = None,
                        reference: Optional[GaussianStats] = None, num_samples: int = PAPER_NUM_SAMPLES,
                        batch_size: int = 16, base_seed: int = 0, is_splits: int = 10,
                        progress: Optional[Callable[[int], None]] = None,
                        on_images: Optional[Callable[[str, torch.Tensor], None]] = None,
                        start: Optional[Tally] = None, on_batch: Optional[Callable[[Tally], None]] = None) -> dict:
    """Generate `num_samples` samples with `pipe.compare` (vanilla, accelerated, and accelerated + adapter
    when the pipeline has one; sample i: class i mod num_classes, seed base_seed + i), in batches, and
    return FID against `reference`, FID against the vanilla samples (both need `features`), and IS (when
    `logits` is given). `progress(n)` is called with the number of samples of each batch done (e.g.
    radar_train.progress); `on_images(run, images)` with each run's uint8 images of each batch, in sample
    order (e.g. an NpzImageWriter per run); `on_batch(tally)` with the tally after each batch. `start`: the
    tally of an interrupted run of the same settings, which this one goes on from (its `done` samples are
    not generated again)."""
    if num_samples < 2:
        raise FidError(f"--num_samples must be at least 2, got {num_samples}")
    if logits is not None and is_splits > num_samples:
        raise FidError(f"--is_splits {is_splits} is more than --num_samples {num_samples}: each split needs samples")
    if is_splits < 1:
        raise FidError(f"--is_splits must be >= 1, got {is_splits}")
    t0 = time.perf_counter()
    sizes = []

    def seen(run, images):
        sizes[:] = list(images.shape[-2:])
        if on_images is not None:
            on_images(run, images)

    tally, runs = tally_samples(pipe, features, logits, 0, num_samples, batch_size, base_seed, progress, seen,
                                start, on_batch)
    result = summarize(tally, runs, reference, features, is_splits, num_samples, batch_size, int(pipe.var.num_classes),
                       base_seed, getattr(getattr(pipe, "sampling", None), "noise", "per_sample"))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["image_size"] = sizes or None
    return result


def fid_runs(pipe) -> list[str]:
    """The runs `pipe.compare` makes: vanilla, accelerated, and accelerated+adapter with an adapter."""
    return ["vanilla", "accelerated"] + (["accelerated+adapter"] if getattr(pipe, "adapted_decoder", None)
                                         is not None else [])


@torch.no_grad()
def tally_samples(pipe, features: Optional[_Extractor], logits: Optional[_Extractor], first: int, stop: int,
                  batch_size: int, base_seed: int = 0, progress: Optional[Callable[[int], None]] = None,
                  on_images: Optional[Callable[[str, torch.Tensor], None]] = None, start: Optional[Tally] = None,
                  on_batch: Optional[Callable[[Tally], None]] = None) -> tuple[Tally, list[str]]:
    """The tally of samples `first` .. `stop` - 1 (a multiple of `batch_size` apart from the end, so that the
    batches are those of a run of all the samples: under official noise a sample depends on its batch) and the
    runs measured; the arguments as in evaluate_generation (a `start` tally counts samples from `first`)."""
    if batch_size < 1:
        raise FidError(f"--batch_size must be >= 1, got {batch_size}")
    tally = start or Tally()
    count = stop - first
    if first % batch_size and first != stop or tally.done % batch_size and tally.done != count or tally.done > count:
        raise FidError(f"cannot go on from sample {first + tally.done} in batches of {batch_size} up to {stop}")
    num_classes = int(pipe.var.num_classes)
    device = pipe.device
    for extractor in (features, logits):
        if extractor is not None:
            extractor.to(device)
    runs: list[str] = list(tally.sums or tally.logits) or fid_runs(pipe)
    for at in range(first + tally.done, stop, batch_size):
        idx = range(at, min(at + batch_size, stop))
        images = pipe.compare([i % num_classes for i in idx], [base_seed + i for i in idx])
        runs = list(images)
        images = {run: imgs.to(device) for run, imgs in images.items()}
        feats = {} if features is None else {run: features(imgs) for run, imgs in images.items()}
        lgts = {} if logits is None else {run: logits(imgs) for run, imgs in images.items()}
        if on_images is not None:
            for run, imgs in images.items():
                on_images(run, imgs)
        tally = _advance(tally, feats, lgts, len(idx))
        if on_batch is not None:
            on_batch(tally)
        if progress is not None:
            progress(len(idx))
    return tally, runs


def merge_tallies(tallies: list[Tally]) -> Tally:
    """One tally of consecutive parts (in sample order): the sums add, the logits follow one another."""
    sums: dict = {}
    logits: dict = {}
    for t in tallies:
        for run, (s, outer) in t.sums.items():
            s, outer = s.cpu(), outer.cpu()
            sums[run] = (s, outer) if run not in sums else (sums[run][0] + s, sums[run][1] + outer)
        for run, chunks in t.logits.items():
            logits[run] = logits.get(run, ()) + tuple(c.cpu() for c in chunks)
    return Tally(sum(t.done for t in tallies), sums, logits)


def summarize(tally: Tally, runs: list[str], reference: Optional[GaussianStats], features: Optional[_Extractor],
              is_splits: int, num_samples: int, batch_size: int, num_classes: int, base_seed: int,
              noise: str = "per_sample") -> dict:
    """The report of a finished tally (evaluate_generation's result, less image_size and seconds)."""
    stats = {r: tally.stats(r) for r in runs if r in tally.sums}
    dim = stats[runs[0]].dim if stats else None
    if reference is not None and features is not None and reference.dim != dim:
        raise FidError(f"--reference has {reference.dim}-d statistics but --inception {features.path} gives "
                       f"{dim}-d features")
    fid_ref = None if reference is None or not stats else {
        r: frechet_distance(stats[r].mu, stats[r].sigma, reference.mu, reference.sigma) for r in runs}
    fid_van = None
    if stats:
        van = stats["vanilla"]
        fid_van = {r: frechet_distance(stats[r].mu, stats[r].sigma, van.mu, van.sigma) for r in runs
                   if r != "vanilla"}
    scores = None
    if tally.logits:
        scores = {r: inception_score(torch.cat([c.cpu() for c in tally.logits[r]]), is_splits) for r in runs}
    gap = None
    if "accelerated+adapter" in runs and fid_van is not None:
        gap = {"fid_vs_reference": None if fid_ref is None else fid_gap_closed(
                   fid_ref["accelerated"], fid_ref["accelerated+adapter"], fid_ref["vanilla"]),
               "fid_vs_vanilla": fid_gap_closed(fid_van["accelerated"], fid_van["accelerated+adapter"], 0.0)}
    notes = [] if dim is None else sample_count_notes(num_samples, dim)
    parts = inception_score_parts(num_samples, is_splits)
    if scores and parts != is_splits:
        notes.append(f"IS over {parts} parts, not the {is_splits} asked for: it splits {num_samples} "
                     f"samples into parts of ceil({num_samples}/{is_splits}); give --num_samples a multiple of "
                     f"--is_splits")
    if noise != "per_sample":
        notes.append(official_noise_note(batch_size))
    notes.append("FID/IS depend on the Inception port: comparable to published numbers only if the extractor "
                 "reproduces the guided-diffusion evaluator's Inception graph and reference statistics")
    return {"num_samples": num_samples, "runs": runs, "fid_vs_reference": fid_ref, "fid_vs_vanilla": fid_van,
            "inception_score": scores, "gap_closed": gap, "feature_dim": dim, "image_size": None,
            "classes": f"i mod {num_classes}", "seeds": f"{base_seed} + i",
            "is_splits": parts if scores else None, "seconds": None, "notes": notes}


def _fmt(x: Optional[float], pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f} %" if pct else f"{x:.3f}"


def markdown_report(result: dict) -> str:
    ref, van, iss = result["fid_vs_reference"], result["fid_vs_vanilla"], result["inception_score"]
    lines = [f"# FID / IS, {result['num_samples']} samples per run", "",
             "| run | FID vs reference | FID vs vanilla samples | IS |", "| --- | --- | --- | --- |"]
    for r in result["runs"]:
        fv = None if van is None else 0.0 if r == "vanilla" else van.get(r)
        is_ = "-" if not iss else f"{iss[r]['mean']:.2f} ± {iss[r]['std']:.2f}"
        lines.append(f"| {r} | {_fmt(ref[r]) if ref else '-'} | {_fmt(fv)} | {is_} |")
    if result["gap_closed"]:
        g = result["gap_closed"]
        lines += ["", f"FID gap closed by the adapter: {_fmt(g['fid_vs_reference'], True)} (vs reference), "
                      f"{_fmt(g['fid_vs_vanilla'], True)} (vs vanilla samples)"]
    proto = result.get("protocol") or {}
    dim = "" if result["feature_dim"] is None else f"; feature dimension {result['feature_dim']}"
    lines += ["", f"Samples: class {result['classes']}, seed {result['seeds']}{dim}; images {result['image_size']}."]
    if result.get("samples_npz"):
        lines += ["", "Samples for the guided-diffusion evaluator: "
                      + ", ".join(f"{r}: `{n}`" for r, n in result["samples_npz"].items())]
    if proto:
        lines += ["", "Protocol:", ""] + [f"- {k}: {json.dumps(v)}" for k, v in proto.items()]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def write_report(result: dict, output: str | Path) -> tuple[Path, Path]:
    from radar_train.outputs import naming, staged_name

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "fid.json", out / "fid.md"
    for path, text in ((js, json.dumps(result, indent=2)), (md, markdown_report(result))):
        with naming(staged_name(out, path.name)):  # (a full disk: said of the file, not of no file)
            path.write_text(text, encoding="utf-8")
    return js, md
