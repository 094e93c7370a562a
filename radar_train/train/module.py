"""RadarLoraModule: PAA training of LoRA adapters on the frozen VQ-VAE decoder (methods.md §4).

Per step, for a batch of cached pairs (fhat_hq, fhat_lq) of shape (B, Cvae, h, w):

    teacher = clamp(decoder(fhat_hq), -1, 1)       adapters disabled, no grad (the same modules: no copy)
    student = decoder_LoRA(fhat_lq)                 unclamped, so gradients survive
    loss    = DistillLoss(student, teacher, ...)    L1 by default (losses.py)

With `label_conditioning.kind: film` the student also gets the sample's class label (`batch["label"]`): a
per-class FiLM of the decoder's GroupNorms (radar_train/export/label_conditioning.py), trained with the LoRA,
off for the teacher like the LoRA. Only the LoRA (and FiLM) tensors train (AdamW, warm-up + cosine) and only
they, with the optimizer, scheduler and loop state (the data order included: datamodule.ResumableLoader) and
the training step's random stream (rng.StepRng), go into Lightning checkpoints; the frozen base is rebuilt
from `decoder` on resume, which continues bit-identically to an uninterrupted run (CPU fp32).
Validation computes the §5.1 metrics (PSNR/SSIM of student and baseline vs teacher, gap closed,
harmlessness); image grids (LQ baseline | student | teacher) of fixed validation samples go to
TensorBoard every `monitor.images_every_n_steps`. Early stopping and the best step's adapter: selection.py.
With `adversarial.weight` > 0 a patch discriminator (adversarial.py) trains beside the adapters and adds its
G loss to the training loss (not to the validation loss); checkpoints hold it, exported adapters do not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from radar_train.config import ModelArgs
from radar_train.images import grid, to_uint8
from radar_train.inputs import check_finite
from radar_train.models import ModelIdentity, load_latent_decoder

from .adversarial import AdversarialArgs, build_adversarial
from .checks import carry_trained_shards, check_cache_matches, check_resume_caches
from .conditioning import LabelConditioningArgs, build_label_conditioning
from .compile import compile_decoder_blocks
from .ema import AdapterEMA, EmaArgs
from .finite import FiniteWeights, check_finite_weights
from .lora import LoraArgs, inject_lora, parameter_counts, resolve_targets
from .losses import DistillLoss, LossArgs
from .metrics import RestorationStats, psnr_per_image, ssim_per_image, to_unit
from .optim import OptimArgs, build_optimizer
from .rng import StepRng, draw_base
from .run_checkpoint import RunCheckpoint, validation_follows
from .selection import BestCheckpoint, EarlyStoppingArgs

__all__ = ["RadarLoraModule", "MonitorArgs", "OutputArgs", "META_VERSION", "module_from_hparams", "is_trained_key",
           "check_checkpoint_version"]

log = logging.getLogger(__name__)
META_VERSION = 1


@dataclass
class MonitorArgs:
    """What goes to the logger besides the losses."""

    images_every_n_steps: int = 500
    """Log an image grid (LQ baseline | student | teacher) of fixed validation samples every N steps (0: off);
    also at the start and the end of training (at most one grid per step). With model.ema the student is the
    average, as in validation."""
    num_image_samples: int = 8
    """Validation samples in the grid (the first ones of the validation shards)."""
    train_metrics_every_n_steps: int = 50
    """Log PSNR / SSIM of student vs teacher on the training batch every N steps (0: off; with gradient
    accumulation, the mean over the step's micro-batches)."""

    def problems(self) -> list[str]:
        return [f"model.monitor.{k} must be >= 0, got {getattr(self, k)}" for k in
                ("images_every_n_steps", "num_image_samples", "train_metrics_every_n_steps") if getattr(self, k) < 0]


@dataclass
class OutputArgs:
    """What is written under the run folder (trainer.default_root_dir)."""

    save_every_n_steps: int = 500
    """Write a Lightning checkpoint (checkpoints/step-NNNNNN.ckpt + last.ckpt; LoRA + optimizer + loop state,
    for resuming) every N steps; the last one is kept, and one is always written at the end."""
    export_every_n_steps: int = 0
    """Also export the adapter to step-NNNNNN/ every N steps (0: only final/)."""
    export_final: bool = True
    """Export the adapter to final/ when training finishes (max_steps / max_epochs reached)."""
    checkpoints: bool = True
    """Write Lightning checkpoints at all (false: none, e.g. for benchmarks; the run cannot be resumed)."""

    def problems(self) -> list[str]:
        return [f"model.output.{k} must be >= 0, got {getattr(self, k)}" for k in
                ("save_every_n_steps", "export_every_n_steps") if getattr(self, k) < 0]


def is_trained_key(key: str) -> bool:
    """Whether a state-dict key of the module is a trained tensor (LoRA, the label conditioning's, or the
    adversarial term's discriminator)."""
    return ".lora_" in key or key.startswith(("label_cond.", "adversarial."))


def check_checkpoint_version(meta: dict, source: str = "checkpoint") -> None:
    """ValueError (one line naming `source`) unless the checkpoint's radar metadata `meta` has a format version
    this radar_train reads (1 to META_VERSION): a newer checkpoint may hold what this code would misread."""
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise ValueError(f"{source} is not a radar-train checkpoint: radar.format_version {version!r}")
    if version > META_VERSION:
        raise ValueError(f"{source} has format version {version}; this radar_train reads up to {META_VERSION} "
                         f"(upgrade radar_train)")


def _plain(x: Any) -> Any:
    """JSON-normalised copy (tuples -> lists, keys -> str): safe for weights_only checkpoint loading."""
    return json.loads(json.dumps(x, default=str))


class StepLearningRateMonitor(LearningRateMonitor):
    """Lightning's, once per optimizer step: with trainer.accumulate_grad_batches it logged each micro-batch's
    start, the same rates K times at one step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int, *args, **kwargs) -> None:
        if batch_idx % max(1, trainer.accumulate_grad_batches) == 0:  # (Lightning accumulates within each epoch)
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx, *args, **kwargs)


def option_problems(*groups) -> list[str]:
    """Every problem of the module's option groups but the decoder (LoraArgs, LossArgs, ...), as its __init__
    refuses them."""
    return [p for g in groups for p in g.problems()]


def layout_problems(preset: str, lora: LoraArgs, label_conditioning: LabelConditioningArgs) -> list[str]:
    """model.lora.targets and model.label_conditioning.norms against the decoder of `preset` (a known one), built
    on the meta device: no weights made or read (radar-train fit --check)."""
    from radar_train.models import LatentDecoder, get_preset

    preset_cfg = get_preset(preset)
    with torch.device("meta"):
        decoder = LatentDecoder(preset_cfg.vae.with_patch_nums(preset_cfg.var.patch_nums))
    problems = []
    for check in (lambda: resolve_targets(decoder, lora.targets),
                  lambda: build_label_conditioning(decoder, label_conditioning, preset)):
        try:
            check()
        except (ValueError, re.error) as e:
            problems.append(str(e))
    return problems


class RadarLoraModule(pl.LightningModule):
    """Frozen VQ-VAE decoder (post_quant_conv + decoder) + peft LoRA, distilled from HQ to LQ latents.

    Args:
        decoder: which VQ-VAE (preset, vae_checkpoint, init_seed); var_checkpoint is not used here.
        lora: LoRA rank, alpha, dropout, targets.
        loss: weights of the distillation terms.
        optim: AdamW, schedule and gradient clipping.
        monitor: image grids and training-batch metrics.
        output: checkpoints and adapter exports.
        early_stopping: early stopping on a validation metric, and whether final/ is the best or the last step.
        label_conditioning: label-conditioned PAA (a per-class FiLM of the decoder's GroupNorms) or none.
        adversarial: a patch discriminator's hinge loss on the student's images (weight 0: none).
        ema: an exponential moving average of the trained weights, which validation, checkpoints and exports use
            (decay 0: none).
    """

    def __init__(self, decoder: ModelArgs = ModelArgs(), lora: LoraArgs = LoraArgs(), loss: LossArgs = LossArgs(),
                 optim: OptimArgs = OptimArgs(), monitor: MonitorArgs = MonitorArgs(),
                 output: OutputArgs = OutputArgs(), early_stopping: EarlyStoppingArgs = EarlyStoppingArgs(),
                 label_conditioning: LabelConditioningArgs = LabelConditioningArgs(),
                 adversarial: AdversarialArgs = AdversarialArgs(), ema: EmaArgs = EmaArgs()):
        super().__init__()
        problems = option_problems(lora, loss, optim, monitor, output, early_stopping, label_conditioning,
                                   adversarial, ema)
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        self.decoder_args, self.lora_args, self.loss_args = decoder, lora, loss
        self.optim_args, self.monitor, self.output = optim, monitor, output
        self.early_stopping, self.label_args, self.adversarial_args = early_stopping, label_conditioning, adversarial
        self.ema_args = ema
        self.save_hyperparameters(_plain({k: dataclasses.asdict(v) for k, v in (
            ("decoder", decoder), ("lora", lora), ("loss", loss), ("optim", optim), ("monitor", monitor),
            ("output", output), ("early_stopping", early_stopping), ("label_conditioning", label_conditioning),
            ("adversarial", adversarial), ("ema", ema))}))
        base, self.identity = load_latent_decoder(decoder.preset, decoder.vae_checkpoint, decoder.init_seed)
        base.decoder.checkpointing = optim.decoder_checkpointing
        if optim.compile:
            compile_decoder_blocks(base)
        cfg = base.config
        self.latent_shape = [cfg.z_channels, cfg.patch_nums[-1], cfg.patch_nums[-1]]
        self.targets = resolve_targets(base, lora.targets)
        self.net = inject_lora(base, lora).train()  # LoRA dropout needs train mode; the base has no dropout
        # hooks on the base decoder's GroupNorms (the peft wrapping leaves them in place); off until decode() sets
        # labels
        self.label_cond = build_label_conditioning(base, label_conditioning, decoder.preset)
        if self.label_cond is not None:
            self.label_cond.attach(base)
        self.loss_fn = DistillLoss(loss)
        self.adversarial = build_adversarial(adversarial, cfg.image_size)  # training-only: not in trainable_params
        self.strict_loading = False  # checkpoints hold the LoRA tensors only
        self.val_stats = RestorationStats()
        self._val_loss = torch.zeros(2, dtype=torch.float64)  # this validation's Σ batch loss x pairs, pairs
        self._val_left: Optional[int] = None  # validation pairs of this rank still to count (None: all)
        self.val_metrics: dict[str, float] = {}
        self._checkpoint_step = 0  # the step of a checkpoint loaded (radar-train validate reports it)
        self._checkpoint_loaded = False
        self._metrics_step: Optional[int] = None  # the step val_metrics were measured at
        self.cache_info: list[dict] = []
        self.data_config: dict = {}
        self._image_batch: Optional[dict[str, torch.Tensor]] = None
        self._image_step: Optional[int] = None  # step of the last image grid logged
        self._export_step: Optional[int] = None  # step of the last step-NNNNNN/ export
        self._export_pending: Optional[int] = None  # step whose export waits for the validation due at it
        self._train_started = False  # whether this fit ran its training loop (not when resumed at its end)
        self.exporting: Optional[str] = None  # the export of the run's end under way ("final/"), else None
        self._train_sums: Optional[tuple[int, torch.Tensor]] = None  # (step, training-batch PSNR, SSIM sums, count)
        self._step_rng = StepRng()  # the training forward's random stream (LoRA dropout), checkpointed
        self._t_last: Optional[float] = None
        self.trainable_params, self.frozen_params = parameter_counts(self.net)
        log.info("LoRA r=%d alpha=%g on %d convs (%s): %s trainable / %s frozen parameters", lora.rank, lora.alpha,
                 len(self.targets), lora.targets, f"{self.trainable_params:,}", f"{self.frozen_params:,}")
        if self.label_cond is not None:
            film = sum(p.numel() for p in self.label_cond.parameters())
            self.trainable_params += film
            log.info("label conditioning (FiLM) on %d GroupNorms, %d classes, embedding %d: %s trainable parameters",
                     len(self.label_cond.norms), self.label_cond.num_classes, self.label_cond.embed_dim, f"{film:,}")

    # ------------------------------------------------------------------ decoding
    @property
    def decoder(self):
        """The LatentDecoder with LoRA layers injected (a property: not registered twice)."""
        return self.net.get_base_model()

    def decode(self, f_hat: torch.Tensor, adapters: bool = True, features: bool = False,
               labels: Optional[torch.Tensor] = None):
        """f_hat (B, Cvae, h, w) -> (image (B, 3, H, W) unclamped, features or None). With adapters, a
        label-conditioned module modulates with `labels` (B,) (required); without, neither LoRA nor FiLM acts."""
        ctx = contextlib.nullcontext() if adapters else self.net.disable_adapter()
        if self.label_cond is not None:
            if adapters and labels is None:
                raise ValueError("this module is label-conditioned: decode with the class labels of the samples")
            # set, not scoped: activation checkpointing re-runs the hooks in the backward, after this call
            self.label_cond.labels = labels.to(f_hat.device).long() if adapters else None
        with ctx:
            if features:
                return self.decoder.forward_features(f_hat)
            return self.decoder(f_hat), None

    def forward(self, f_hat: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Student image, clamped to [-1, 1]."""
        return self.decode(f_hat, labels=labels)[0].clamp(-1, 1)

    def compute_loss(self, batch: dict[str, torch.Tensor]):
        """(loss, terms, student, teacher) for a batch of pairs: the whole forward of a training step (with the
        adversarial term, whose G loss counts from adversarial.start_step)."""
        hq, lq, labels = batch["fhat_hq"], batch["fhat_lq"], batch.get("label")
        feats = self.loss_args.needs_features
        with torch.no_grad():
            t_raw, t_feats = self.decode(hq, adapters=False, features=feats)
        teacher = t_raw.clamp(-1, 1)
        student, s_feats = self.decode(lq, adapters=True, features=feats, labels=labels)
        identity = self.decode(hq, labels=labels)[0] if self.loss_args.identity_weight > 0 else None
        loss, terms = self.loss_fn(student, teacher, s_feats, t_feats, identity)
        if self.adversarial is not None:
            adv, adv_terms = self.adversarial(student, teacher, self.global_step >= self.adversarial_args.start_step)
            loss, terms = loss + adv, terms | adv_terms
        return loss, terms, student, teacher

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self._step_rng.started:  # the first step: rank 0's base for every rank (one collective)
            self._step_rng.start(self.trainer.strategy.broadcast(draw_base(), src=0))
        with self._step_rng.active(self.device, self.global_rank):  # exact resume: the stream is in every checkpoint
            loss, terms, student, teacher = self.compute_loss(batch)
        bs = batch["fhat_hq"].shape[0]
        # (not prog_bar: Lightning reads every progress-bar value back to the host after each step, on a GPU a wait
        # for the step's kernels; radar_train's progress reads the loss from callback_metrics when it shows it)
        self.log("train/loss", loss, batch_size=bs)
        if len(terms) > 1:
            self.log_dict({f"train/loss_{k}": v for k, v in terms.items()}, batch_size=bs)
        every = self.monitor.train_metrics_every_n_steps
        if every and (self.global_step + 1) % every == 0 and self.loggers:
            with torch.no_grad():  # summed over the step's micro-batches (gradient accumulation), logged after it
                s01, t01 = to_unit(student.detach()), to_unit(teacher)
                sums = torch.stack([psnr_per_image(s01, t01).sum(), ssim_per_image(s01, t01).sum(),
                                    s01.new_full((), float(bs))])  # (filled there: a number copied would wait)
            if self._train_sums is not None and self._train_sums[0] == self.global_step:
                sums = sums + self._train_sums[1]
            self._train_sums = (self.global_step, sums)
        return loss

    def _log_training_metrics(self) -> None:
        """train/psnr_student and train/ssim_student of a step, the means over its micro-batches' images, once
        the optimizer has stepped. Straight to the loggers, at that step: self.log would hold the value and
        Lightning would write it again at every later step it logs in this epoch, as if measured there."""
        if self._train_sums is None or self._train_sums[0] == self.global_step:
            return
        step, (psnr, ssim, n) = self._train_sums[0], self._train_sums[1].tolist()
        self._train_sums = None
        for logger in self.loggers:  # (rank zero only: the loggers' own rule)
            logger.log_metrics({"train/psnr_student": psnr / n, "train/ssim_student": ssim / n}, step=step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._log_training_metrics()
        now = time.perf_counter()
        if self._t_last is not None:
            n = batch["fhat_hq"].shape[0] * self.trainer.world_size
            # a host tensor: Lightning copies a Python number to the module's device, which on a GPU waits for the
            # step's kernels (a synchronisation every step: the host could not queue the next step meanwhile)
            self.log("train/samples_per_s", torch.tensor(n / max(now - self._t_last, 1e-9)), batch_size=1)
        self._t_last = now
        step = self.global_step
        if self.monitor.images_every_n_steps and step % self.monitor.images_every_n_steps == 0:
            self.log_image_grid()
        every = self.output.export_every_n_steps
        if every and step % every == 0 and step > 0 and step not in (self._export_step, self._export_pending):
            # once per optimizer step (gradient accumulation); after the validation due at this step, if one is
            # (on_validation_epoch_end), so that radar_config.yaml's metrics are this step's
            if validation_follows(self.trainer):
                self._export_pending = step
            else:
                self._export_step_adapter()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._export_step_adapter(pending=True)  # one that waited for a validation that did not run (no batches)

    def _export_step_adapter(self, pending: bool = False) -> None:
        """Export the adapter of this step (the EMA's average, with one) to step-NNNNNN/; with `pending`, only if
        this step's export waits (for its validation), else nothing."""
        step = self.global_step
        if pending and self._export_pending != step:
            self._export_pending = None
            return
        with self._averaged_weights():
            self.export(Path(self.trainer.default_root_dir) / f"step-{step:06d}")
        self._export_step, self._export_pending = step, None

    def _export_owed_by_the_checkpoint(self) -> None:
        """A resumed run writes the step-NNNNNN/ export of the step its checkpoint holds, if that step is an
        export step and the folder is missing. Without a validation at that step the checkpoint is saved (by a
        callback) before the module's own end-of-step hook exports, and a SLURM requeue save comes at the same
        point: a run killed or requeued in between resumed past the step, and its export was never written."""
        every, step = self.output.export_every_n_steps, self.global_step
        if self.trainer.ckpt_path is None or not every or step <= 0 or step % every:
            return
        owed = next((c.validation_owed for c in self.trainer.callbacks if isinstance(c, RunCheckpoint)), None)
        if owed == step and step != self._export_step:  # after that validation, run again first: its metrics
            self._export_pending = step
            return
        if not (Path(self.trainer.default_root_dir) / f"step-{step:06d}").exists():
            log.info("writing step-%06d/, which the run resumed from that step had not exported", step)
            self._export_step_adapter()

    def _averaged_weights(self):
        """Context: the EMA's average in the weights (model.ema), or nothing changed without one."""
        ema = next((c for c in self.trainer.callbacks if isinstance(c, AdapterEMA)), None)
        return ema.averaged(self) if ema is not None else contextlib.nullcontext()

    def on_train_epoch_start(self) -> None:
        self._t_last = None
        # a stream (no sampler for Lightning to give the epoch to) reads the epoch the loop trains
        loaders = self.trainer.train_dataloader
        for loader in loaders.values() if isinstance(loaders, dict) else (
                loaders if isinstance(loaders, (list, tuple)) else [loaders]):
            if callable(getattr(loader, "set_epoch", None)):
                loader.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)

    def on_train_start(self) -> None:
        self._train_started = True
        self._rates_from_the_schedule()
        self._export_owed_by_the_checkpoint()
        if self.optim_args.compile and self.device.type == "cpu" and self.trainer.is_global_zero:
            log.warning("model.optim.compile on the CPU: slower than eager here (0.94x at toy, batch 16; "
                        "docs/benchmarks.md, Training, CPU); it is meant for GPUs")
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics({"params/trainable": float(self.trainable_params),
                                     "params/frozen": float(self.frozen_params)}, step=self.global_step)
        every, step = self.monitor.images_every_n_steps, self.global_step
        if step == 0 or not (every and step % every == 0):  # a resumed run's step on the cadence was logged
            self.log_image_grid()

    def _rates_from_the_schedule(self) -> None:
        """The optimizer settings of the next step from this run's config at the restored step. A resume restores
        the checkpoint's: each group's rate, initial_lr, weight_decay and betas, and the scheduler's base_lrs
        (which LambdaLR would apply after the step): a continued run with another learning_rate, weight_decay,
        betas, lr_scale or schedule would keep the old ones. Without a resume, or with the same config, this sets
        the same numbers (bit for bit: the same products as build_optimizer)."""
        args = self.optim_args
        for cfg in self.trainer.lr_scheduler_configs:
            s = cfg.scheduler
            if isinstance(s, torch.optim.lr_scheduler.LambdaLR):
                for i, (group, fn) in enumerate(zip(s.optimizer.param_groups, s.lr_lambdas)):
                    scale = self._lr_scale(group)
                    base = args.learning_rate * scale  # (x 1.0 is exact: the adapters' group as built)
                    group.update(initial_lr=base, weight_decay=args.weight_decay, betas=tuple(args.betas))
                    s.base_lrs[i] = base
                    group["lr"] = base * fn(s.last_epoch)
                s._last_lr = [group["lr"] for group in s.optimizer.param_groups]

    def _lr_scale(self, group: dict) -> float:
        """The learning-rate multiple of an optimizer parameter group in this run's config (configure_optimizers:
        the label conditioning's and the discriminator's groups have their own; the adapters' is 1)."""
        ids = {id(p) for p in group["params"]}
        for part, scale in ((self.label_cond, self.label_args.lr_scale),
                            (self.adversarial, self.adversarial_args.lr_scale)):
            if part is not None and any(id(p) in ids for p in part.parameters()):
                return scale
        return 1.0

    def on_train_end(self) -> None:
        self._export_step_adapter(pending=True)
        self.log_image_grid(averaged=True)  # (AdapterEMA's on_train_end, before this hook, put the average in)
        if self.output.export_final and self._training_finished():
            with self._exporting("final/"):
                self.export_final(Path(self.trainer.default_root_dir) / "final")

    def on_fit_start(self) -> None:
        self._train_started = False
        self.exporting = None

    def on_fit_end(self) -> None:
        """A run resumed from a checkpoint at its end (max_steps): Lightning runs no training loop, so neither
        on_train_start nor on_train_end; the exports that the run killed (or stopped by SIGTERM) there owed are
        written here: the step export, and final/ when it is not this step's (missing, or an earlier end's: a run
        continued to more steps and killed, or whose export failed, after its last save; with model.ema, the
        average)."""
        if self._train_started or self.trainer.ckpt_path is None:
            return
        self._export_owed_by_the_checkpoint()
        final = Path(self.trainer.default_root_dir) / "final"
        if not (self.output.export_final and self._training_finished()):
            return
        from radar_train.export.adapter import run_step_of

        exported = run_step_of(final)
        if exported is not None and exported >= self.global_step:  # (this step's, or a later one's: left alone)
            return
        log.info("writing final/, which %s", "the run resumed at its end had not exported" if exported is None else
                 f"held the adapter of step {exported}, an earlier end of the run, not of step {self.global_step}")
        with self._averaged_weights(), self._exporting("final/"):
            self.export_final(final)

    @contextlib.contextmanager
    def _exporting(self, what: str):
        """Context: `exporting` names the export under way, and still does once it raised (read by the failure's
        last line: run_checkpoint.py; on_fit_start clears it)."""
        self.exporting = what
        yield
        self.exporting = None

    def _early_stopped(self) -> bool:
        es = self.trainer.early_stopping_callback
        return es is not None and es.stopping_reason is not EarlyStoppingReason.NOT_STOPPED

    def _time_limit_reached(self) -> bool:
        """Lightning's Timer (--trainer.max_time) has spent its time: the run's end, as max_steps is (its
        elapsed time is in the checkpoint, so a resume would stop at once again and never write final/)."""
        from lightning.pytorch.callbacks import Timer

        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        remaining = None if timer is None else timer.time_remaining()
        return remaining is not None and remaining <= 0

    def _training_finished(self) -> bool:
        t = self.trainer
        if self._early_stopped() or self._time_limit_reached():
            return True
        steps_done = t.max_steps is not None and t.max_steps > 0 and self.global_step >= t.max_steps
        epochs_done = t.max_epochs is not None and t.max_epochs > 0 and t.current_epoch >= t.max_epochs
        return steps_done or epochs_done  # whichever limit Lightning stopped at (not a requeue's or a signal's stop)

    def configure_optimizers(self):
        total = self.optim_args.schedule_steps or self._total_steps()
        extra = [] if self.label_cond is None else [(self.label_cond.parameters(), self.label_args.lr_scale)]
        if self.adversarial is not None:
            extra.append((self.adversarial.parameters(), self.adversarial_args.lr_scale))
        opt, sched = build_optimizer(self.net.parameters(), self.optim_args, total, extra)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "train/lr"}}

    def _total_steps(self) -> int:
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return int(self.trainer.max_steps)
        return int(self.trainer.estimated_stepping_batches)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.optim_args.grad_clip_norm
        if not clip:
            return
        if self.adversarial is None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")
            return
        # the discriminator's gradients are clipped on their own: they must not scale the adapters' step down
        disc = {id(p) for p in self.adversarial.parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip_fn = torch.nn.utils.clip_grad_value_ if gradient_clip_algorithm == "value" else torch.nn.utils.clip_grad_norm_
        for part in ([p for p in params if id(p) not in disc], [p for p in params if id(p) in disc]):
            clip_fn(part, clip)

    def checkpoint_callback(self, root: str | Path) -> Optional[ModelCheckpoint]:
        """RUN/checkpoints/step-NNNNNN.ckpt every output.save_every_n_steps (the latest kept) + last.ckpt, and
        both at the step training ends on (RunCheckpoint: last.ckpt holds the state final/ is exported from)."""
        if not self.output.checkpoints:
            return None
        return RunCheckpoint(dirpath=Path(root) / "checkpoints", filename="step-{step:06d}",
                             auto_insert_metric_name=False, every_n_train_steps=self.output.save_every_n_steps,
                             save_top_k=1, save_last=True)

    def configure_callbacks(self):
        # early stopping and the best checkpoint before the run's checkpoint, which saves their state after a
        # validation (Lightning keeps the order of the checkpoint callbacks when it moves them last)
        # the weight average before them too: a checkpoint written after a step holds that step's average
        # the weights' check first: it raises before the checkpoints save NaN weights
        callbacks = [cb for cb in (FiniteWeights(), self.ema_args.callback(),
                                   self.early_stopping.early_stopping_callback(),
                                   self.early_stopping.best_checkpoint_callback(self.trainer.default_root_dir),
                                   self.checkpoint_callback(self.trainer.default_root_dir)) if cb is not None]
        if self.trainer.loggers:
            callbacks.append(StepLearningRateMonitor(logging_interval="step"))
        return callbacks

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_stats = RestorationStats(self.device)
        self._val_loss = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._val_left = self._val_unique()

    def _val_unique(self) -> Optional[int]:
        """How many validation pairs of this rank are not the padding a distributed sampler repeats so that
        every rank has as many (cache.reader.BlockShuffleSampler.unique_count); None: every pair counts."""
        loaders = self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and len(loaders) == 1 else loaders
        unique = getattr(getattr(loader, "sampler", None), "unique_count", None)
        return unique() if callable(unique) else None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        hq, lq, labels = batch["fhat_hq"], batch["fhat_lq"], batch.get("label")
        if self._val_left is not None:  # a padded repeat is counted on the rank whose pair it is, not again here
            keep, self._val_left = max(0, min(hq.shape[0], self._val_left)), self._val_left - hq.shape[0]
            if keep == 0:
                return
            hq, lq, labels = hq[:keep], lq[:keep], None if labels is None else labels[:keep]
        feats = self.loss_args.needs_features
        with self._float32_decodes():
            t_raw, t_feats = self.decode(hq, adapters=False, features=feats)
            teacher = t_raw.clamp(-1, 1)
            baseline = self.decode(lq, adapters=False)[0]
            student, s_feats = self.decode(lq, adapters=True, features=feats, labels=labels)
            harmless = self.decode(hq, adapters=True, labels=labels)[0]
            identity = harmless if self.loss_args.identity_weight > 0 else None
            loss, _ = self.loss_fn(student, teacher, s_feats, t_feats, identity)
        # summed here and reduced over the ranks in _record_validation: Lightning's weighted mean (sync_dist) holds
        # the batch sizes as an integer tensor, and their mean over ranks is truncated when they differ (val/loss
        # x1.5 on 3 pairs over 2 ranks)
        self._val_loss += torch.stack([loss.detach().double() * hq.shape[0],  # (the count filled on the device: a
                                       loss.new_full((), float(hq.shape[0]), dtype=torch.float64)])  # copy waits)
        self.val_stats.update(to_unit(teacher), to_unit(baseline), to_unit(student), to_unit(harmless))

    def _float32_decodes(self):
        """Validation decodes in float32 where the weights are float32 (a mixed precision: autocast off), as
        radar-eval and the pipeline's default decode do: under bf16-mixed the metrics were not radar-eval's (bf16
        decoding caps the PSNR of two near-identical images at about 52-58 dB on the toy decoder). A true precision
        (bf16-true) decodes in its weights' dtype."""
        if next(self.decoder.parameters()).dtype != torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def on_validation_end(self) -> None:
        # the logged "step" (the loggers' step of this validation's scalars, _record_validation) is dropped from the
        # callback metrics once every callback has seen this validation: Lightning keeps a metric there until it is
        # logged again, and a checkpoint callback names a file by a logged "step" (one saved after the run's last
        # validation was named for that validation's step: step-000004.ckpt holding step 5)
        self.trainer.callback_metrics.pop("step", None)

    def on_validation_epoch_end(self) -> None:
        self._t_last = None
        if self.trainer.sanity_checking:
            return
        self._record_validation()
        # the step export that waited for this validation: before the run's checkpoint of this step
        # (RunCheckpoint saves in on_validation_end), so that a run resumed from that checkpoint has the export
        self._export_step_adapter(pending=True)

    def _record_validation(self) -> None:
        """The validation's metrics, reduced over the ranks: logged, and kept for radar_config.yaml."""
        sums = self.trainer.strategy.reduce(self.val_stats.sums, reduce_op="sum")
        loss_sum, pairs = self.trainer.strategy.reduce(self._val_loss, reduce_op="sum").tolist()
        metrics = self.val_stats.compute(sums)
        if not metrics:
            return
        self.val_metrics = metrics
        step = self.validated_step()
        self._metrics_step = step
        scalars = {f"val/{k}": float(v) for k, v in metrics.items()}
        if pairs > 0:
            scalars["val/loss"] = loss_sum / pairs
        self.log_dict(scalars, sync_dist=False)
        # the loggers' step of these scalars (Lightning's way: a logged "step" metric): the optimizer step validated,
        # as the console line, the image grid and step-NNNNNN/ say (Lightning's own is one less in a fit, whose
        # validation runs before it counts the step, and 0 in radar-train validate, which restores no loop); dropped
        # from the callback metrics at the validation's end (on_validation_end)
        self.log("step", float(step), sync_dist=False)
        if self.trainer.is_global_zero:
            log.info("%s %d: val PSNR student %.2f dB, baseline %.2f dB (Δ %+.2f dB), G_mse %.3f, SSIM %.4f vs %.4f, "
                     "harmless %.2f dB", "step" if self._fitting() else "checkpoint step" if self._checkpoint_loaded
                     else "adapter as initialised, step", step,
                     metrics["psnr_student"], metrics["psnr_baseline"],
                     metrics["delta_psnr"], metrics["gap_closed_mse"], metrics["ssim_student"],
                     metrics["ssim_baseline"], metrics.get("psnr_harmless", float("nan")))

    def _fitting(self) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING

    def validated_step(self) -> int:
        """The optimizer step of the weights validated: the fit's own, or in radar-train validate that of the
        checkpoint loaded (0 without one: the adapter as initialised)."""
        return self.global_step if self._fitting() else self._checkpoint_step

    # ------------------------------------------------------------------ data hookup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "manifests"):
            return
        classes = None if self.label_cond is None else self.label_cond.num_classes
        for path, manifest in dm.manifests.items():
            check_cache_matches(path, manifest, self.identity, self.latent_shape, classes)
        self.cache_info = dm.describe()
        self.data_config = _plain(dict(dm.hparams))
        if self.monitor.num_image_samples:
            self._image_batch = dm.image_batch(self.monitor.num_image_samples)

    @torch.no_grad()
    def log_image_grid(self, averaged: bool = False) -> None:
        """Rows of (LQ baseline | student | teacher) for the fixed validation samples -> TensorBoard. The student
        is decoded with the weights validation and final/ use: with model.ema, the average, swapped in here
        unless `averaged` (it is in the weights already: training's end), so that every grid shows the same
        model (during training the weights are those being trained)."""
        exp = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if self._image_batch is None or not hasattr(exp, "add_image") or not self.trainer.is_global_zero \
                or self._image_step == self.global_step:  # once per step (the cadence and the end can meet)
            return
        was_training = self.training
        self.eval()
        # in the precision the steps' batches get (a "-true" precision casts the module: bf16-true, 16-true)
        batch = self.trainer.precision_plugin.convert_input(self._image_batch)
        hq, lq, labels = (batch[k].to(self.device) for k in ("fhat_hq", "fhat_lq", "label"))
        with contextlib.nullcontext() if averaged else self._averaged_weights():
            cols = [self.decode(lq, adapters=False)[0], self.decode(lq, labels=labels)[0],
                    self.decode(hq, adapters=False)[0]]
        self.train(was_training)
        cols = [to_uint8(to_unit(c.float())) for c in cols]
        rows = [[c[i] for c in cols] for i in range(hq.shape[0])]
        scale = max(1, 96 // cols[0].shape[-1])
        img = grid(rows, col_titles=["LQ baseline", "student", "teacher"], scale=scale)
        exp.add_image("val/samples", np.asarray(img), self.global_step, dataformats="HWC")
        self._image_step = self.global_step

    # ------------------------------------------------------------------ checkpoints and export
    def radar_meta(self) -> dict:
        """Everything an adapter's radar_config.yaml records (plain JSON types)."""
        t = self._trainer
        trainer = {} if t is None else {"max_steps": t.max_steps, "max_epochs": t.max_epochs,
                                        "precision": str(t.precision), "world_size": t.world_size,
                                        "accumulate_grad_batches": t.accumulate_grad_batches,
                                        "val_check_interval": getattr(t, "val_check_interval", None)}
        if getattr(t, "_val_check_time_interval", None) is not None:  # (a time: Lightning sets no val_check_interval)
            trainer["val_check_interval"] = f"{t._val_check_time_interval:g} s"
        return _plain({
            "format_version": META_VERSION,
            "global_step": self.global_step,
            "base": {"preset": self.decoder_args.preset, "vae": self.identity.to_dict(),
                     "latent_shape": self.latent_shape},
            "lora": {"rank": self.lora_args.rank, "alpha": self.lora_args.alpha, "dropout": self.lora_args.dropout,
                     "targets": self.lora_args.targets, "target_modules": self.targets},
            "caches": self.cache_info,
            "label_conditioning": None if self.label_cond is None else self.label_cond.describe(),
            "training": {"model": dict(self.hparams), "data": self.data_config, "trainer": trainer},
            "metrics": self.val_metrics,
            # the step those metrics were measured at: the last validation's, which at a step without one (a run
            # whose max_steps is no multiple of val_check_interval, a step export between validations) is earlier
            "metrics_step": self._metrics_step if self.val_metrics else None,
        })

    def export(self, out_dir: Path, meta: Optional[dict] = None) -> Optional[Path]:
        """Write the adapter folder (peft format + radar_config.yaml, + label_conditioning.safetensors when
        conditioned) with `meta` (default: radar_meta()); rank zero only."""
        if self._trainer is not None and (not self.trainer.is_global_zero or self.trainer.fast_dev_run):
            return None  # (--trainer.fast_dev_run: a smoke test writes nothing, as Lightning's checkpoints then)
        from radar_train.export.adapter import save_adapter

        if self._trainer is not None:  # (a fit's: a run that diverged, said as such; save_adapter refuses too)
            check_finite_weights(self.trainer, self)
        meta = self.radar_meta() if meta is None else meta
        path = save_adapter(self.net, out_dir, meta, conditioning=self.label_cond, option="the run's export")
        log.info("adapter exported to %s", path)
        return path

    def export_final(self, out_dir: Path) -> Optional[Path]:
        """final/: the adapter of the best validation (early_stopping.final_adapter best / auto with early
        stopping; from its checkpoint) or of the last step; radar_config.yaml `selection` says which."""
        es = self.early_stopping
        stop = self.trainer.early_stopping_callback
        selection: dict[str, Any] = {"final_adapter": "last", "step": self.global_step,
                                     "early_stopping": es.enabled, "stopped_early": self._early_stopped()}
        if stop is not None and self._early_stopped():
            selection["stopping_reason"] = stop.stopping_reason_message
        elif self._time_limit_reached():
            selection["stopping_reason"] = f"trainer.max_time reached at step {self.global_step}"
        best_cb = next((c for c in self.trainer.callbacks if isinstance(c, BestCheckpoint)), None)
        best = best_cb.best() if best_cb is not None else None
        if es.keeps_best and best is None:
            log.warning("no validation checkpoint of %s was kept: final/ holds the last step's adapter", es.monitor)
        if not es.keeps_best or best is None:
            return self.export(out_dir, meta=self.radar_meta() | {"selection": _plain(selection)})
        from .export import read_checkpoint

        state = read_checkpoint(best["checkpoint"])
        self.check_checkpoint(state, best["checkpoint"])
        current = {k: v.detach().clone() for k, v in self.state_dict().items() if is_trained_key(k)}
        selection.update(final_adapter="best", step=int(state["global_step"]), monitor=es.monitor,
                         mode=es.resolved_mode, value=best["value"], checkpoint=best["checkpoint"],
                         last_step=self.global_step)
        meta = dict(state["radar"]) | {"selection": _plain(selection)}
        try:
            self.load_state_dict(state["state_dict"], strict=False)
            return self.export(out_dir, meta=meta)
        finally:
            self.load_state_dict(current, strict=False)

    def lora_keys(self) -> dict[str, torch.Size]:
        """Shapes of the trained tensors (LoRA, and the label conditioning's) by state-dict key."""
        return {k: v.shape for k, v in self.state_dict().items() if is_trained_key(k)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for key in ("state_dict", "current_model_state"):  # the latter: the current weights beside an EMA's average
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if is_trained_key(k)}
        checkpoint["radar"] = self.radar_meta()
        if (rng := self._step_rng.state_dict()) is not None:
            checkpoint["radar_rng"] = rng

    def step_stream_state(self) -> Optional[dict[str, torch.Tensor]]:
        """The training step's random stream as checkpoints hold it (run_checkpoint.py keeps it at each step's end)."""
        return self._step_rng.state_dict()

    def restore_step_stream(self, state: Optional[dict[str, torch.Tensor]]) -> None:
        """Back to a `step_stream_state` (a failed step's save, which holds the stream as of the step before)."""
        self._step_rng.load_state_dict(state)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        source = "checkpoint" if self._trainer is None or not self.trainer.ckpt_path else str(self.trainer.ckpt_path)
        self.check_checkpoint(checkpoint, source)
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:  # (validate may use others)
            check_resume_caches(checkpoint, self.cache_info, source)
            carry_trained_shards(checkpoint, self.cache_info)
            for cb in self.trainer.callbacks:  # (before Lightning restores the callbacks, by their state keys)
                if isinstance(cb, RunCheckpoint):
                    cb.adopt_saved_state(checkpoint)
        for sched in checkpoint.get("lr_schedulers") or []:
            # LambdaLR would restore the saved WarmupCosine settings over this run's: the schedule's warm-up,
            # length (schedule_steps, else max_steps) and floor are the config's; the step count is the checkpoint's
            if isinstance(sched, dict) and "lr_lambdas" in sched:
                sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])
        self.val_metrics = dict(checkpoint["radar"].get("metrics") or {})
        self._metrics_step = checkpoint["radar"].get("metrics_step")  # (None in checkpoints before 2026-12-07)
        self._step_rng.load_state_dict(checkpoint.get("radar_rng"))
        self._checkpoint_step, self._checkpoint_loaded = int(checkpoint.get("global_step") or 0), True
        if not self._fitting() and self._trainer is not None and self.logger is not None:
            # radar-train validate: its hparams.yaml (tb/validate/version_N/) names the checkpoint it measured
            # (Lightning writes the file with the module's settings after this hook, merging these in)
            self.logger.log_hyperparams({"ckpt_path": source, "checkpoint_step": self._checkpoint_step})

    def check_checkpoint(self, checkpoint: dict, source: str = "checkpoint") -> None:
        """ValueError if `checkpoint` is of a format version this radar_train does not read, or was not trained
        on this base decoder with this LoRA layout."""
        meta = checkpoint.get("radar")
        if not isinstance(meta, dict):
            raise ValueError(f"{source} has no radar metadata: it was not written by radar-train")
        check_checkpoint_version(meta, source)
        vae = ModelIdentity.from_dict(meta["base"]["vae"])
        if (vae.kind, vae.value) != (self.identity.kind, self.identity.value):
            raise ValueError(f"{source} was trained on the VQ-VAE {vae.kind}:{vae.value}; this run's decoder is "
                             f"{self.identity.kind}:{self.identity.value}")
        lora = meta.get("lora") if isinstance(meta.get("lora"), dict) else {}
        if lora.get("alpha") is not None and float(lora["alpha"]) != float(self.lora_args.alpha):
            raise ValueError(f"{source} was trained with LoRA alpha {float(lora['alpha']):g}; this run's "
                             f"--model.lora.alpha is {self.lora_args.alpha:g}, which would scale its trained "
                             f"updates by {self.lora_args.alpha / float(lora['alpha']):.3g} (keep the alpha of the "
                             f"run)")
        own = self.lora_keys()
        got = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
        missing, unexpected = sorted(set(own) - set(got)), sorted(set(got) - set(own))
        shapes = [k for k in set(own) & set(got) if tuple(own[k]) != got[k]]
        if missing or unexpected or shapes:
            raise ValueError(f"{source} holds another LoRA layout (rank / targets / label conditioning / "
                             f"discriminator): "
                             f"{len(missing)} missing, "
                             f"{len(unexpected)} unexpected, {len(shapes)} reshaped tensors, e.g. "
                             f"{(missing + unexpected + shapes)[0]}")
        check_finite({k: v for k, v in checkpoint["state_dict"].items() if is_trained_key(k)}, source,
                     "checkpoint (its trained weights)")


_GROUPS = {"decoder": ModelArgs, "lora": LoraArgs, "loss": LossArgs, "optim": OptimArgs, "monitor": MonitorArgs,
           "output": OutputArgs, "early_stopping": EarlyStoppingArgs, "label_conditioning": LabelConditioningArgs,
           "adversarial": AdversarialArgs, "ema": EmaArgs}


def module_from_hparams(hparams: dict, training: bool = True) -> RadarLoraModule:
    """Rebuild the module from a checkpoint's hyper_parameters (plain dicts of the config groups). With
    `training` False (an export) the loss is left at its defaults: its settings shape no tensor, and their
    files (e.g. LPIPS weights) need not exist where the adapter is exported."""
    kwargs = {}
    for name, cls in _GROUPS.items():
        if name == "loss" and not training:
            kwargs[name] = cls()
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        given = dict(hparams.get(name) or {})
        if "betas" in given:
            given["betas"] = tuple(given["betas"])
        kwargs[name] = cls(**{k: v for k, v in given.items() if k in fields})
    return RadarLoraModule(**kwargs)
