"""RadarPipeline: VAR + an acceleration method (none / fastvar / stagevar / sca) + the VQ-VAE decoder, with an
optional PAA adapter on the decoder (merged by default: no inference overhead).

    pipe = RadarPipeline.from_config(PipelineArgs(model=..., accel=AccelArgs("fastvar"), adapter="run/final"))
    images = pipe.generate(labels=[1, 2], seeds=[0, 1])            # uint8 (B, 3, H, W)
    runs = pipe.compare(labels=[1, 2], seeds=[0, 1])  # {'vanilla', 'accelerated', 'accelerated+adapter'}: uint8

Vanilla images are decoded with the plain decoder; accelerated images with the adapted one when an
adapter is loaded. An adapter trained for another VQ-VAE is refused; one trained on latents of another
acceleration (method, preset or any setting that changes the latents) loads with a warning naming them.
"""
from __future__ import annotations

import json
import logging
import operator
import os
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch

from radar_train.accel import AccelMethod, build_accel
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.images import to_pil, to_uint8
from radar_train.models import LatentDecoder, ModelIdentity, get_preset, load_models
from radar_train.sampling import NextScaleSampler, SampleOutput, generate_pairs, noise_keys

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16")
"""The short names and torch's (the spellings radar-cache's --precision takes), so one spelling works in both."""
_DTYPES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
Output = Literal["uint8", "pil", "float"]
OUTPUTS: tuple[str, ...] = ("uint8", "pil", "float")


@dataclass
class PipelineArgs:
    """What RadarPipeline runs."""

    model: ModelArgs = field(default_factory=ModelArgs)
    accel: AccelArgs = field(default_factory=AccelArgs)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    adapter: Optional[str] = None
    """Adapter folder exported by radar-train (adapter_config.json, adapter_model.safetensors, radar_config.yaml)."""
    merge_adapter: bool = True
    """Fold the LoRA update into the decoder's convolutions (no inference overhead); false keeps it separate."""
    device: str = "auto"
    """cuda, cpu, or auto (cuda when available)."""
    precision: Precision = "auto"
    """Transformer compute dtype: auto = bf16 on CUDA, fp32 on CPU; fp32 / bf16 / fp16 or torch's spellings
    float32 / bfloat16 / float16."""
    decode_precision: Precision = "fp32"
    """Decoder compute dtype: fp32 (float32 weights and activations; on a GPU cuDNN may run the convolutions in
    TF32, as torch allows by default), bf16 / fp16 (autocast, as radar-train trains the adapters under
    bf16-mixed), or auto (bf16 on CUDA, fp32 on CPU). Images come out in float32 either way."""


def check_precision(precision, name: str = "precision") -> str:
    """`precision` if it is one of PRECISIONS; else a ValueError naming it (`name`), raised before any model
    loads."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(device: torch.device, precision: Precision, name: str = "precision") -> Optional[torch.dtype]:
    """The autocast dtype of `precision` on `device` (None: fp32, no autocast)."""
    if check_precision(precision, name) == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _DTYPES[precision]


def check_output(output) -> str:
    """`output` if it is one of OUTPUTS; else a ValueError naming it (checked before sampling, so that a typo
    such as "numpy" is not answered with uint8 images)."""
    if not isinstance(output, str) or output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")
    return output


def check_flag(value, name: str) -> bool:
    """`value` if it is True or False (numpy's bool too); else a TypeError naming it (a string such as "no" is
    true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _one_per_sample(values, name: str, what: str) -> None:
    """TypeError naming `name` unless `values` is a list / tuple / range, a 1-D numpy array or a 1-D tensor (an
    int, None or a string is not a batch: the sampler would fail deep inside or read it otherwise)."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        if values.ndim != 1:
            raise TypeError(f"{name} must be one-dimensional ({what}), got a {values.ndim}-d "
                            f"{type(values).__name__}")
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence ({what}), got {type(values).__name__}")


def _as_given(labels, i: int):
    """Label i as the caller gave it (the checked tensor may hold it rounded, or wrapped round), as a number."""
    value = labels[i]
    return value.item() if hasattr(value, "item") else value


def check_labels(labels, num_classes: int) -> torch.Tensor:
    """`labels` as a (B,) int64 CPU tensor: a sequence, 1-D array or 1-D tensor of whole class numbers in
    [0, num_classes] (num_classes = unconditional). TypeError / ValueError naming `labels` otherwise: a
    fraction would otherwise be truncated (1.7 sampled as class 1), where decoding refuses it."""
    what = "one class number per sample"
    _one_per_sample(labels, "labels", what)
    if isinstance(labels, Sequence) and any(isinstance(x, (bool, np.bool_)) for x in labels):
        raise TypeError(f"labels must be class numbers ({what}), got a bool")
    # Python floats as float64: float32 would round 9.9999999 to the whole 10 (another class) before the check
    exact = ({"dtype": torch.float64} if isinstance(labels, Sequence) and any(isinstance(x, float) for x in labels)
             else {})
    try:
        t = torch.as_tensor(labels, **exact).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"labels must be class numbers ({what}), got {labels!r:.80}") from None
    if t.ndim != 1 or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"labels must be class numbers ({what}), got {labels!r:.80}")
    if t.is_floating_point():
        bad = (~(t.isfinite() & (t == t.round()))).nonzero()
        if bad.numel():
            raise ValueError(f"labels must be whole class numbers, got {_as_given(labels, int(bad[0]))}")
    outside = ((t < 0) | (t > num_classes)).nonzero()  # (before .long(): 1e20 would wrap round)
    if outside.numel():
        raise ValueError(f"labels must lie in [0, {num_classes}] ({num_classes} = unconditional), "
                         f"got {_as_given(labels, int(outside[0]))}")
    return t.long()


def check_seeds(seeds, count: int) -> list[int]:
    """`seeds` as a list of `count` ints within 64 bits: a sequence of ints, or a 1-D integer array or tensor,
    one seed per label (official noise seeds the call's generator with the first). TypeError / ValueError
    naming `seeds` otherwise."""
    what = "one integer seed per label"
    _one_per_sample(seeds, "seeds", what)
    if isinstance(seeds, (torch.Tensor, np.ndarray)):
        if isinstance(seeds, np.ndarray):
            integral = np.issubdtype(seeds.dtype, np.integer)
        else:
            integral = not (seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool)
        if not integral:
            raise TypeError(f"seeds must be integers ({what}), got dtype {seeds.dtype}")
        values = [int(s) for s in seeds.tolist()]
    else:
        try:
            if any(isinstance(s, (bool, np.bool_)) for s in seeds):
                raise TypeError("a bool")
            values = [operator.index(s) for s in seeds]  # ints, numpy ints, 0-d integer tensors; not 1.0
        except TypeError:
            raise TypeError(f"seeds must be integers ({what}), got {seeds!r:.80}") from None
    big = [s for s in values if not -2 ** 63 <= s < 2 ** 63]
    if big:
        raise ValueError(f"seeds: {big[0]} does not fit in 64 bits")
    if len(values) != count:
        raise ValueError(f"seeds: got {len(values)} seeds for {count} labels (one seed per label)")
    return values


def resolve_device(name: str) -> torch.device:
    """The device `name` stands for (`auto`: cuda when available); ValueError (one line) for a bad one."""
    from radar_train.config import check_device

    return check_device(name, "device")


_NOT_THE_METHOD = ("mask_file", "rank_ratios_file", "kernel", "per_scale")  # paths, execution, derived tables


def _accel_settings(desc: dict) -> dict:
    """A method's describe() as it reads back from JSON / YAML (string keys), less what does not change the
    latents it makes (file paths: the content is there as mask_sha256 / rank_ratios; the attention kernel)."""
    return {k: v for k, v in json.loads(json.dumps(desc, default=str)).items() if k not in _NOT_THE_METHOD}


def accel_differences(trained: dict, mine: dict) -> list[str]:
    """The settings in which the method an adapter was trained on (its cache record) differs from `mine`;
    a setting only one side records (an older adapter's) is not compared. A preset alone is no difference where
    both record the method's settings: it names them (None for the same settings given one by one)."""
    a, b = _accel_settings(trained), _accel_settings(mine)
    differ = [k for k in a if k in b and a[k] != b[k]]
    if differ == ["preset"] and any(k in b for k in a if k not in ("method", "preset")):
        return []
    return [f"{k}: {a[k]} vs {b[k]}" for k in differ]


def untrained_accel(trained: Sequence[dict], mine: dict) -> list[str]:
    """How `mine` differs from the accelerations an adapter was trained on (its caches' records, one per cache):
    nothing when it is one of them or none is recorded, else its differences from the first."""
    diffs = [accel_differences(t, mine) for t in trained]
    return [] if not diffs or not all(diffs) else diffs[0]


def untrained_var(trained: Sequence[dict], mine: Optional[dict]) -> Optional[str]:
    """How the VAR `mine` (a model record: preset, var {kind, value}) differs from those whose latents an adapter
    was trained on (its caches' model records): None when it is one of them or none is recorded, else the first
    one's 'preset, kind:value vs ...' (every 256 px VAR shares the VQ-VAE, so a d16 adapter loads on d30)."""
    def name(m: dict) -> str:
        v = m.get("var") or {}
        value = str(v.get("value"))
        depth = (v.get("config") or {}).get("depth")
        return (f"{m['preset']} " if m.get("preset") else f"depth {depth} " if depth else "") + \
            f"{v.get('kind')}:{value[:12] if v.get('kind') == 'file' else value}"

    known = [m for m in trained if isinstance(m, dict) and isinstance(m.get("var"), dict) and m["var"].get("value")]
    if mine is None or not known or not (mine.get("var") or {}).get("value"):
        return None
    if any(m["var"]["value"] == mine["var"]["value"] for m in known):
        return None
    return f"{name(known[0])} vs {name(mine)}"


def _merged_vqvae(vae_checkpoint: Optional[str], vae_id: ModelIdentity, accel: dict) -> Optional[dict]:
    """The record of a VQ-VAE file that `radar-train merge` wrote (it decodes every latent with its adapter), or
    None; a warning when the pipeline runs another acceleration than the one the adapter restores (vanilla
    included)."""
    from radar_train.export.merged import merged_record

    record = merged_record(vae_checkpoint, vae_id.value) if vae_id.kind == "file" else None
    if record is None:
        return None
    diffs = untrained_accel([r["accel"] for r in record.get("restores") or [] if isinstance(r, dict) and r.get("accel")],
                            accel)
    if diffs:
        warnings.warn(f"model.vae_checkpoint {vae_checkpoint} has a RADAR adapter merged in (radar-train merge), "
                      f"trained on latents of another acceleration than the pipeline runs ({'; '.join(diffs)}, "
                      f"trained vs now): decode these latents with the base VQ-VAE file", stacklevel=3)
    return record


def check_pipeline_args(args: PipelineArgs) -> torch.device:
    """The device of `args`; a bad `precision`, `device`, model preset or acceleration setting (e.g. SCA-Mask
    without its mask file, a FastVAR scale the preset does not have) refused in one line, reading no weights."""
    check_precision(args.precision)
    check_precision(args.decode_precision, "decode_precision")
    check_flag(args.merge_adapter, "merge_adapter")  # (a string such as "false" is true)
    device = resolve_device(args.device)
    shapes = get_preset(args.model.preset).var  # (the method against the preset's scales: weights load slowly)
    build_accel(args.accel, shapes.patch_nums, shapes.depth)
    return device


class RadarPipeline:
    def __init__(self, vqvae, var, accel: AccelMethod, sampling: SamplingConfig, *, vae_identity: ModelIdentity,
                 var_identity: Optional[ModelIdentity] = None, autocast_dtype: Optional[torch.dtype] = None,
                 adapter: Optional[str] = None, merge_adapter: bool = True,
                 decode_dtype: Optional[torch.dtype] = None):
        self.vqvae, self.var, self.accel, self.sampling = vqvae, var, accel, sampling
        self.vae_identity, self.var_identity = vae_identity, var_identity
        self.device = var.pos_1LC.device
        self.autocast_dtype = autocast_dtype
        self.decode_dtype = None if decode_dtype == torch.float32 else decode_dtype
        """The decoder's autocast dtype (None: float32)."""
        if autocast_dtype is not None and var.body_dtype == torch.float32:
            var.cast_body_(autocast_dtype)
        self.sampler = NextScaleSampler(var, vqvae.quantize, sampling, autocast_dtype=autocast_dtype)
        self._samplers: dict[SamplingConfig, NextScaleSampler] = {}
        self.decoder: LatentDecoder = LatentDecoder.sharing(vqvae).eval()
        self.adapted_decoder: Optional[torch.nn.Module] = None
        self.adapter_meta: Optional[dict] = None
        self.adapter_dir: Optional[str] = None
        self.adapter_merged: Optional[bool] = None
        self._adapter_version: Optional[tuple[int, int]] = None  # (export.adapter_version of the folder loaded)
        self.merged_vqvae: Optional[dict] = None
        """from_config: the record of a VQ-VAE file with an adapter merged in (`radar-train merge`), else None."""
        if adapter is not None:
            self.load_adapter(adapter, merge=merge_adapter)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, args: PipelineArgs) -> "RadarPipeline":
        """The pipeline `args` describe, checked before any model loads (`check_pipeline_args`)."""
        device = check_pipeline_args(args)
        m = args.model
        vqvae, var, vae_id, var_id = load_models(m.preset, m.vae_checkpoint, m.var_checkpoint, device, m.init_seed)
        accel = build_accel(args.accel, var.patch_nums, var.depth, var_id)
        merged = _merged_vqvae(m.vae_checkpoint, vae_id, accel.describe())
        pipe = cls(vqvae, var, accel, args.sampling, vae_identity=vae_id, var_identity=var_id,
                   autocast_dtype=resolve_precision(device, args.precision), adapter=args.adapter,
                   merge_adapter=args.merge_adapter,
                   decode_dtype=resolve_precision(device, args.decode_precision, "decode_precision"))
        pipe.merged_vqvae = merged
        return pipe

    @classmethod
    def from_files(cls, vae_checkpoint: str, var_checkpoint: str, preset: str = "var-d16", *, accel: str = "fastvar",
                   accel_preset: str = "default", adapter: Optional[str] = None, **kw) -> "RadarPipeline":
        """Official checkpoint files + an acceleration method by name and preset (sca: its spec options,
        e.g. accel_preset="default+mask_file=d16_sca.safetensors")."""
        a = AccelArgs(method=accel)
        if accel == "fastvar":
            a.fastvar.preset = accel_preset
        elif accel == "stagevar":
            a.stagevar.preset = accel_preset
        elif accel == "sca":
            from radar_train.accel.sca import args_from_spec

            a.sca = args_from_spec(accel_preset)
        return cls.from_config(PipelineArgs(model=ModelArgs(preset, vae_checkpoint, var_checkpoint), accel=a,
                                            adapter=adapter, **kw))

    def load_adapter(self, adapter_dir: str, merge: bool = True) -> None:
        """Check the adapter against this VQ-VAE (refused if different) and this acceleration config
        (warning if the method or preset differs), then put it on a copy of the decoder. Torch's global RNG
        is left as it was."""
        from radar_train.export import adapter_version, check_same_adapter, load_adapter, read_radar_config

        if not isinstance(adapter_dir, (str, os.PathLike)):
            raise TypeError(f"adapter must be a folder's path (str or os.PathLike), got {type(adapter_dir).__name__}")
        check_flag(merge, "merge")
        version = adapter_version(adapter_dir)
        meta = read_radar_config(adapter_dir)
        dec = self.vqvae.latent_decoder().eval()  # (built without random draws; load_adapter keeps the RNG too)
        adapted = load_adapter(dec, adapter_dir, identity=self.vae_identity, merge=merge,
                               num_classes=self.var.num_classes).eval()
        check_same_adapter(adapter_dir, version)
        # (warned once every check passed: an adapter refused for another VQ-VAE gets its error line alone; and
        # before the pipeline takes it: where warnings are errors, the call that raised leaves the pipeline as it was)
        diffs = untrained_accel([c["accel"] for c in meta.get("caches") or [] if c.get("accel")], self.accel.describe())
        if diffs:  # (an adapter trained on several caches: any of their accelerations is its own)
            warnings.warn(f"adapter {adapter_dir} was trained on latents of another acceleration than the "
                          f"pipeline runs ({'; '.join(diffs)}, trained vs now); restoration may be worse",
                          stacklevel=2)
        mine = None if self.var_identity is None else {"var": self.var_identity.to_dict()}
        other = untrained_var([c.get("model") for c in meta.get("caches") or []], mine)
        if other:
            warnings.warn(f"adapter {adapter_dir} was trained on latents of another VAR than the pipeline's ({other}, "
                          f"trained vs now); restoration may be worse", stacklevel=2)
        self.adapted_decoder, self._adapter_version = adapted, version  # (fingerprint checks the files again)
        # (kept by its absolute path: read again by fingerprint, wherever the process has gone by then)
        self.adapter_meta, self.adapter_dir, self.adapter_merged = meta, os.path.abspath(adapter_dir), merge

    def fingerprint(self) -> dict:
        """What identifies the samples this pipeline makes, for a command that goes on from an interrupted run
        (radar-fid, radar-generate): the weights (sha256, or the random preset and seed), the method's settings,
        the sampler's, the adapter's files (sha256) and whether it is merged, the compute dtypes (the decoder's
        only when it is not float32, so that progress saved before the option existed still matches), the
        radar_train version, the digest of its code (`code_digest`: the version string stays the same between
        releases) and torch's version (either can change the samples by round-off). JSON-ready."""
        import radar_train
        from radar_train.code_identity import code_digest
        from radar_train.models.checkpoint import file_sha256

        adapter = None if self.adapter_dir is None else {
            "files": {p.name: file_sha256(p) for p in sorted(Path(self.adapter_dir).iterdir()) if p.is_file()},
            "merged": self.adapter_merged}
        if adapter is not None:  # (the files hashed are those of the adapter loaded)
            from radar_train.export import check_same_adapter

            check_same_adapter(self.adapter_dir, self._adapter_version)
        return json.loads(json.dumps({
            "radar_train": radar_train.__version__, "radar_train_code": code_digest(), "torch": torch.__version__,
            "vae": self.vae_identity.value,
            "var": None if self.var_identity is None else self.var_identity.value,
            "accel": _accel_settings(self.accel.describe()), "sampling": asdict(self.sampling), "adapter": adapter,
            "precision": str(self.autocast_dtype or torch.float32),
            **({} if self.decode_dtype is None else {"decode_precision": str(self.decode_dtype)})}, default=str))

    # ------------------------------------------------------------------ generation
    def _checked(self, labels, seeds, adapter: bool = False) -> tuple[torch.Tensor, list[int]]:
        """A call's labels (on the host: the sampler moves them without a synchronisation) and seeds, checked
        before any sampling (`check_labels`, `check_seeds`); with `adapter` (the call decodes with it), also
        against a label-conditioned adapter's classes, which exclude the unconditional label."""
        host = check_labels(labels, self.var.num_classes)
        if adapter and getattr(self.adapted_decoder, "label_conditioned", False):  # (`is_label_conditioned`)
            self.adapted_decoder.film.check_labels(host, host.shape[0], host.device)
        return host, check_seeds(seeds, host.shape[0])

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor, adapter: bool, labels: Optional[Sequence[int]] = None) -> torch.Tensor:
        """f_hat -> images in [0, 1] (float32, B×3×H×W), decoded in `decode_dtype`. A label-conditioned adapter
        needs the samples' labels, one class number per latent (a sequence, 1-D array or 1-D tensor, checked as
        `generate` checks them: no bool, fraction or string): best given on the host, where they are checked
        without waiting for the device."""
        from radar_train.export import decode_with_labels, is_label_conditioned

        check_flag(adapter, "adapter")
        dec = self.adapted_decoder if adapter and self.adapted_decoder is not None else self.decoder
        if labels is not None and is_label_conditioned(dec):  # (as generate's: no bool, 2-d, string)
            labels = check_labels(labels, self.var.num_classes)
        f_hat = self._checked_latents(f_hat)
        amp = torch.autocast(self.device.type, dtype=self.decode_dtype) if self.decode_dtype else nullcontext()
        with amp:
            img = decode_with_labels(dec, f_hat, labels)
        return img.float().clamp(-1, 1).add(1).mul(0.5)

    def _checked_latents(self, f_hat) -> torch.Tensor:
        """`decode`'s f_hat as float32 on the pipeline's device; TypeError / ValueError naming it when it is not a
        floating B×C×h×w tensor of the VQ-VAE's C latent channels (a cache's float16 latents are fine)."""
        c = self.vqvae.config.z_channels
        if not isinstance(f_hat, torch.Tensor) or not f_hat.is_floating_point():
            what = type(f_hat).__name__ + (f" of {f_hat.dtype}" if isinstance(f_hat, torch.Tensor) else "")
            raise TypeError(f"f_hat must be a floating-point torch.Tensor (B, {c}, h, w), got {what}")
        if f_hat.dim() != 4 or f_hat.shape[1] != c or min(f_hat.shape[2:]) < 1:
            raise ValueError(f"f_hat must be (B, {c}, h, w): the VQ-VAE's {c} latent channels, got "
                             f"{tuple(f_hat.shape)}")
        return f_hat.to(self.device, torch.float32)

    def _sampling(self, cfg, top_k, top_p) -> NextScaleSampler:
        """The sampler for these overrides (kept, so that a captured engine's graphs serve later calls)."""
        if cfg is None and top_k is None and top_p is None:
            return self.sampler
        s = self.sampling
        new = replace(s, cfg=s.cfg if cfg is None else cfg, top_k=s.top_k if top_k is None else top_k,
                      top_p=s.top_p if top_p is None else top_p)
        if new.problems() or new not in self._samplers:  # (the keys compare top_k 64 == 64.0: checked first)
            self._samplers[new] = NextScaleSampler(self.var, self.vqvae.quantize, new,
                                                   autocast_dtype=self.autocast_dtype)
        return self._samplers[new]

    @torch.no_grad()
    def sample_latents(self, labels: Sequence[int], seeds: Sequence[int], accelerated: bool = True,
                       cfg: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None) -> SampleOutput:
        """The latents of the labels and per-sample seeds (one seed per label), accelerated by default."""
        check_flag(accelerated, "accelerated")
        return self._sample(*self._checked(labels, seeds), accelerated, cfg, top_k, top_p)

    def _sample(self, labels: torch.Tensor, seeds: list[int], accelerated: bool, cfg, top_k, top_p) -> SampleOutput:
        """sample_latents of labels and seeds checked already (`_checked`)."""
        sampler = self._sampling(cfg, top_k, top_p)
        return sampler.sample(labels, **self._noise_keys(seeds), accel=self.accel if accelerated else None)

    def _noise_keys(self, seeds: Sequence[int]) -> dict:
        """The sampler's noise keywords for these samples' seeds (`noise_keys`)."""
        return noise_keys(self.sampling.noise, seeds)

    @torch.no_grad()
    def generate(self, labels: Sequence[int], seeds: Sequence[int], cfg: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, *, accelerated: bool = True,
                 use_adapter: bool = True, output: Output = "uint8"):
        """Images for the labels and per-sample seeds: accelerated (with the adapter when loaded) by default."""
        check_output(output)
        check_flag(accelerated, "accelerated")
        check_flag(use_adapter, "use_adapter")
        labels, seeds = self._checked(labels, seeds, adapter=accelerated and use_adapter)
        res = self._sample(labels, seeds, accelerated, cfg, top_k, top_p)
        img = self.decode(res.f_hat, adapter=accelerated and use_adapter, labels=labels)  # (on the host: see decode)
        if output == "float":
            return img
        u8 = to_uint8(img)
        return [to_pil(x) for x in u8] if output == "pil" else u8

    @torch.no_grad()
    def compare(self, labels: Sequence[int], seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        """uint8 images of the same samples: vanilla, accelerated, accelerated + adapter (when loaded).
        One forked run: the scales before the first accelerated one are computed once."""
        labels, seeds = self._checked(labels, seeds, adapter=True)
        pair = generate_pairs(self.sampler, labels, self.accel, **self._noise_keys(seeds))
        out = {"vanilla": to_uint8(self.decode(pair.hq.f_hat, adapter=False)),
               "accelerated": to_uint8(self.decode(pair.lq.f_hat, adapter=False))}
        if self.adapted_decoder is not None:
            out["accelerated+adapter"] = to_uint8(self.decode(pair.lq.f_hat, adapter=True, labels=labels))
        return out
