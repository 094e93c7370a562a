"""Label-conditioned PAA: a per-class FiLM of the VQ-VAE decoder's GroupNorms, beside the LoRA adapter.

An accelerated latent can lose what makes its class recognisable (StageVAR's paper preset skips the last two
scales, where a toy shape's corners and points are drawn). The class label is known when an image is decoded
(the generator was conditioned on it), so the adapted decoder may use it. For every GroupNorm ℓ of the
decoder (C_ℓ channels):

    y = GroupNorm_ℓ(x) · (1 + γ_ℓ(c)) + β_ℓ(c),      [γ_ℓ(c); β_ℓ(c)] = W_ℓ · e(c)

with one class embedding e (num_classes × embed_dim, drawn N(0, 1)) shared by every layer and one projection
W_ℓ (2·C_ℓ × embed_dim) per layer, initialised to zero: at step 0 the conditioned decoder is exactly the
plain (LoRA) decoder, and training decides how far each class moves the features. The FiLM acts through
forward hooks on the GroupNorm modules, so the model code knows nothing of it and the LoRA part stays a plain
peft adapter, merged into the convolutions at inference; the FiLM adds one small matrix product and one
multiply-add over the feature map per normalisation layer.

Files of a conditioned adapter folder, beside the peft ones:

    DIR/label_conditioning.safetensors
        embedding                      (num_classes, embed_dim)
        proj.<GroupNorm module name>   (2·C, embed_dim): rows 0..C-1 give γ, rows C..2C-1 give β
    DIR/radar_config.yaml, section `label_conditioning`:
        {kind: film, file: label_conditioning.safetensors, num_classes, embed_dim, norms: {name: C, ...}}

Module names are those of `LatentDecoder` (`decoder.mid.block_1.norm1`, ..., `decoder.norm_out`).
`LabelConditionedDecoder` is what loading gives back: `forward(f_hat, labels)`; `decode_with_labels` calls a
conditioned or a plain decoder alike.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn

from radar_train.inputs import InputError, check_finite, check_floating, load_safetensors
from radar_train.noise import to_device

__all__ = ["LABEL_CONDITIONING_WEIGHTS", "FILM_KIND", "ClassFiLM", "LabelConditionedDecoder", "decode_with_labels",
           "is_label_conditioned", "conditioning_section", "load_label_conditioning", "group_norms", "trained_classes",
           "UntrainedClassWarning"]

LABEL_CONDITIONING_WEIGHTS = "label_conditioning.safetensors"
FILM_KIND = "film"


def group_norms(decoder: nn.Module) -> dict[str, int]:
    """{module name: channels} of every nn.GroupNorm of `decoder` (a LatentDecoder, or a peft model around one:
    the names are those of the base decoder), in module order."""
    base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
    return {n: m.num_channels for n, m in base.named_modules() if isinstance(m, nn.GroupNorm)}


class UntrainedClassWarning(UserWarning):
    """A label-conditioned adapter asked to decode a class its training pairs did not hold."""


def trained_classes(meta: dict) -> Optional[frozenset[int]]:
    """The class labels of the pairs an adapter was trained on, from its radar_config.yaml `meta`: the labels of
    each cache's training shards, which its plan fixes (the plan's classes cycled over the samples in order).
    None when the metadata cannot tell (a cache recorded without its plan or its training shards)."""
    from radar_train.cache.plan import Plan

    out: set[int] = set()
    for record in meta.get("caches") or []:
        try:
            out.update(Plan.from_dict(record["plan"]).shard_samples(record["train_shards"])[0].tolist())
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
    return frozenset(out) if out else None


class ClassFiLM(nn.Module):
    """Per-class scale and shift of a decoder's GroupNorm outputs (see the module docstring).

    Args:
        norms: {GroupNorm module name: channels} of the decoder it will be attached to.
        num_classes: class labels run from 0 to num_classes - 1.
        embed_dim: width of the shared class embedding.
    """

    def __init__(self, norms: dict[str, int], num_classes: int, embed_dim: int):
        super().__init__()
        if not norms:
            raise ValueError("label conditioning: the decoder has no GroupNorm to modulate")
        if num_classes < 1 or embed_dim < 1:
            raise ValueError(f"label conditioning: num_classes and embed_dim must be >= 1, got {num_classes} "
                             f"and {embed_dim}")
        self.norms = {str(k): int(v) for k, v in norms.items()}
        self.num_classes, self.embed_dim = int(num_classes), int(embed_dim)
        self.embedding = nn.Parameter(torch.randn(self.num_classes, self.embed_dim))
        self.proj = nn.ParameterList([nn.Parameter(torch.zeros(2 * c, self.embed_dim)) for c in self.norms.values()])
        self.labels: Optional[torch.Tensor] = None
        """The labels the hooks modulate with (B,) long; None: the hooks leave the decoder as it is."""
        self._handles: list = []
        self.trained: Optional[frozenset[int]] = None
        """A loaded adapter's: the classes of its training pairs (None: every class, not known, or being trained).
        A label outside them has the class embedding's random start: check_labels warns once
        (UntrainedClassWarning)."""
        self.source = "the adapter"  # (what the warning names: a loaded adapter's folder)
        self._warned = False

    # ------------------------------------------------------------------ hooks
    def mismatch(self, decoder: nn.Module) -> Optional[str]:
        """Why this FiLM cannot be attached to `decoder` (a norm layer it names is missing or not a GroupNorm of
        its width); None when it can."""
        base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
        modules = dict(base.named_modules())
        for name, c in self.norms.items():
            m = modules.get(name)
            if not isinstance(m, nn.GroupNorm) or m.num_channels != c:
                found = f"a GroupNorm of {m.num_channels} channels" if isinstance(m, nn.GroupNorm) else \
                    ("missing" if m is None else type(m).__name__)
                return f"the decoder's {name} should be a GroupNorm of {c} channels ({found})"
        return None

    def attach(self, decoder: nn.Module) -> "ClassFiLM":
        """Hook every GroupNorm this FiLM was built for in `decoder` (a LatentDecoder, or a peft model around
        one). ValueError naming a module that is missing or not a GroupNorm of the right width."""
        problem = self.mismatch(decoder)
        if problem:
            raise ValueError(f"label conditioning: {problem}: the adapter was made for another decoder")
        base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
        modules = dict(base.named_modules())
        self.detach()
        self._handles = [modules[name].register_forward_hook(functools.partial(self._modulate, i))
                         for i, name in enumerate(self.norms)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _modulate(self, i: int, module: nn.Module, args, out: torch.Tensor) -> Optional[torch.Tensor]:
        labels = self.labels
        if labels is None:
            return None
        if labels.shape[0] != out.shape[0]:
            raise ValueError(f"label conditioning: {labels.shape[0]} labels for a batch of {out.shape[0]}")
        c = out.shape[1]
        gb = nn.functional.embedding(labels, self.embedding) @ self.proj[i].t()  # (B, 2C)
        gamma, beta = gb.view(-1, 2, c, *([1] * (out.dim() - 2))).unbind(1)
        return torch.addcmul(beta, out, 1 + gamma)

    @contextlib.contextmanager
    def conditioned(self, labels: Optional[torch.Tensor]) -> Iterator[None]:
        """Modulate with `labels` inside the block (None: not at all); the previous labels afterwards."""
        before, self.labels = self.labels, labels
        try:
            yield
        finally:
            self.labels = before

    # ------------------------------------------------------------------ format
    def check_labels(self, labels, batch: int, device: torch.device) -> torch.Tensor:
        """`labels` as a (batch,) long tensor on `device`; ValueError if the count or a value is wrong. Checked
        where they are (a list or a host tensor on the host, then copied without blocking: a check on a GPU, or a
        plain copy to it, waits for its queued work, e.g. the sampling of these latents)."""
        raw = torch.as_tensor(labels).reshape(-1)
        if raw.is_floating_point() and not torch.equal(raw, raw.round()):
            raise ValueError("label conditioning: labels must be whole class numbers, got fractions")
        t = raw.long()
        if t.shape[0] != batch:
            raise ValueError(f"label conditioning: {t.shape[0]} labels for {batch} latents")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(f"label conditioning: labels must lie in 0..{self.num_classes - 1} (the adapter's "
                             f"classes), got {int(t.min())}..{int(t.max())}")
        if self.trained is not None and not self._warned:
            from radar_train.config import format_int_list

            untrained = sorted(set(t.tolist()) - self.trained)
            if untrained:
                self._warned = True  # (once: a run over every class would say it for each batch)
                warnings.warn(f"{self.source} was trained on pairs of classes {format_int_list(self.trained, ',')} "
                              f"only: {'class' if len(untrained) == 1 else 'classes'} "
                              f"{format_int_list(untrained, ',')} (and any "
                              f"other outside them) {'decodes' if len(untrained) == 1 else 'decode'} with an "
                              f"untrained class embedding (its random start), so its restoration is not what "
                              f"validation measured and may be worse than without the adapter",
                              UntrainedClassWarning, stacklevel=2)
        return to_device(t, device)

    def describe(self) -> dict:
        """The `label_conditioning` section of radar_config.yaml (plain types)."""
        return {"kind": FILM_KIND, "file": LABEL_CONDITIONING_WEIGHTS, "num_classes": self.num_classes,
                "embed_dim": self.embed_dim, "norms": dict(self.norms)}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of label_conditioning.safetensors (contiguous CPU copies)."""
        out = {"embedding": self.embedding.detach().cpu().contiguous()}
        for name, w in zip(self.norms, self.proj):
            out[f"proj.{name}"] = w.detach().cpu().contiguous()
        return out

    def load_file_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Load label_conditioning.safetensors tensors; InputError naming `source` if any is missing, misshaped or
        not floating point."""
        want = {k: tuple(v.shape) for k, v in self.file_tensors().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        bad = sorted(k for k in want if got.get(k) != want[k]) + sorted(set(got) - set(want))
        if bad:
            k = bad[0]
            raise InputError(f"{source}: does not match its radar_config.yaml label_conditioning section "
                             f"({len(bad)} tensors missing, extra or misshaped, e.g. {k}: {got.get(k)} instead of "
                             f"{want.get(k)})")
        check_floating(tensors, source, "label-conditioning weights radar-train wrote")  # (copied in rounded)
        with torch.no_grad():
            self.embedding.copy_(tensors["embedding"])
            for name, w in zip(self.norms, self.proj):
                w.copy_(tensors[f"proj.{name}"])


class LabelConditionedDecoder(nn.Module):
    """A (merged or peft) decoder with a ClassFiLM attached: `forward(f_hat, labels)` -> image (unclamped).

    Decoding without labels is refused (ValueError): a label-conditioned adapter is not meant to run without."""

    label_conditioned = True

    def __init__(self, decoder: nn.Module, film: ClassFiLM):
        super().__init__()
        self.decoder, self.film = decoder, film
        film.attach(decoder)

    @property
    def num_classes(self) -> int:
        return self.film.num_classes

    def forward(self, f_hat: torch.Tensor, labels=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("this adapter is label-conditioned: decode with the class labels of the samples")
        labels = self.film.check_labels(labels, f_hat.shape[0], f_hat.device)
        with self.film.conditioned(labels):
            return self.decoder(f_hat)


def is_label_conditioned(decoder: nn.Module) -> bool:
    return bool(getattr(decoder, "label_conditioned", False))


def decode_with_labels(decoder: nn.Module, f_hat: torch.Tensor, labels=None) -> torch.Tensor:
    """decoder(f_hat, labels) for a label-conditioned decoder, decoder(f_hat) for any other (labels ignored)."""
    return decoder(f_hat, labels) if is_label_conditioned(decoder) else decoder(f_hat)


def conditioning_section(meta: dict) -> Optional[dict]:
    """The adapter metadata's label_conditioning section, or None for an unconditioned adapter."""
    section = meta.get("label_conditioning")
    if not isinstance(section, dict) or section.get("kind", "none") == "none":
        return None
    return section


def load_label_conditioning(adapter_dir: str | Path, meta: dict,
                            num_classes: Optional[int] = None) -> Optional[ClassFiLM]:
    """The ClassFiLM of an adapter folder (None if unconditioned). InputError naming the file when its section
    or weights are unusable; ValueError when `num_classes` (the model's) differs from the adapter's."""
    section = conditioning_section(meta)
    d = Path(adapter_dir)
    cfg = d / "radar_config.yaml"
    if section is None:
        if (d / LABEL_CONDITIONING_WEIGHTS).exists():  # (loading it as a plain LoRA would drop its FiLM unsaid)
            raise InputError(f"{cfg}: has no label_conditioning section, yet the folder holds "
                             f"{LABEL_CONDITIONING_WEIGHTS}: a label-conditioned adapter's metadata is incomplete "
                             f"(radar-train export writes both)")
        return None
    if section.get("kind") != FILM_KIND:
        raise InputError(f"{cfg}: label_conditioning kind {section.get('kind')!r} is not known (known: {FILM_KIND})")
    try:
        norms = {str(k): int(v) for k, v in dict(section["norms"]).items()}
        n, dim = int(section["num_classes"]), int(section["embed_dim"])
        name = str(section.get("file") or LABEL_CONDITIONING_WEIGHTS)
        if Path(name).name != name or name in ("", ".", ".."):  # a file of the folder, never one elsewhere
            raise ValueError(f"file {name!r} is not a file name inside the adapter folder")
        file = d / name
        with torch.random.fork_rng(devices=[]):  # (its random start is overwritten: loading leaves the RNG alone)
            film = ClassFiLM(norms, n, dim)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{cfg}: label_conditioning section is incomplete or malformed ({e})") from None
    if num_classes is not None and int(num_classes) != n:
        raise ValueError(f"adapter {d} is conditioned on {n} classes, the model has {num_classes}")
    tensors = load_safetensors(file, "label-conditioning weights")
    film.load_file_tensors(tensors, str(file))
    check_finite(tensors, file, "adapter's label conditioning")
    trained = trained_classes(meta)
    # (None where every class was trained: nothing to warn of, and no per-batch look at the labels)
    film.trained = None if trained is not None and trained >= set(range(n)) else trained
    film.source = f"label-conditioned adapter {d}"
    return film

