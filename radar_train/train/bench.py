"""Training benchmark (ratios): Lightning vs a bare PyTorch loop, data loading vs a step, peak memory of a
training step vs VAR sampling of the same batch.

    python -m radar_train.train.bench --preset tiny --batch_size 16
    python -m radar_train.train.bench --preset var-d16 --batch_size 16        # on a GPU: bf16-mixed

Rows (`run_train_benchmark` returns them as dicts):
- lightning_vs_bare: samples/s of `Trainer.fit` on RadarLoraModule vs a hand-written loop doing the same
  forward/backward (teacher no-grad decode + student decode, L1, AdamW, clipping, scheduler) on the same batch,
  timed after `warmup` steps. Target ratio >= 0.95.
- data_vs_step: main-process time to load one batch from a cache (PairDataset + BlockShuffleSampler, no
  workers) vs the bare step time. Without --cache a small temporary cache is made with `radar-cache`'s
  run_cache (random weights of the preset).
- memory_train_vs_sampling: peak memory of a training step (decoder + LoRA + AdamW state + activations)
  of the batch (in micro-batches with --micro_batch_size) vs VAR sampling of the same batch (VAR + VQ-VAE, CFG,
  decode to images). On CUDA: torch.cuda.max_memory_allocated, each measured from an empty allocator (weights
  included). On the CPU: in a fresh spawned process per measurement, the peak resident set size while the work runs (VmHWM, reset
  with /proc/self/clear_refs once the models are built, so build-time transients don't count) minus the
  resident size after the imports (so the weights count). Target <= 0.5.
- checkpointing (with --checkpointing_rows true): one row per micro-batch size of --micro_batch_sizes (default:
  the step's own) and model.optim.activation_checkpointing mode (false, norms, blocks): the training step's peak
  memory (as the memory row measures it; the memory row's own figure for the variant it ran) and its time (the
  bare loop's step, interleaved with the other variants' steps, medians), each against the first variant (the
  first micro-batch size, false; ratio: memory), and against VAR sampling of the batch where the memory row ran.
- compiled_vs_eager (with --compiled_row true): samples/s of the bare loop's step with model.optim.compile
  (the decoder's blocks through torch.compile) vs without, interleaved step by step (medians); the compiled
  warm-up steps, which compile, are reported apart (warmup_s).

A step in micro-batches (--micro_batch_size M) runs batch_size / M forward/backward passes of M pairs and sums
their gradients before the one optimizer step, as Lightning's accumulation trains (--data.batch_size M
--trainer.accumulate_grad_batches batch_size/M): the same update with the activations of M pairs.
Random weights of the preset are used unless a VQ-VAE checkpoint is given: kernel speed and memory do not
depend on the weight values.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import resource
import signal
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Callable, Literal, Optional, Union

import torch

__all__ = ["TrainBenchArgs", "run_train_benchmark", "format_table", "main"]

log = logging.getLogger(__name__)


@dataclass
class TrainBenchArgs:
    """What to benchmark."""

    preset: str = "tiny"
    """Model preset (random weights unless vae_checkpoint is given)."""
    vae_checkpoint: Optional[str] = None
    """VQ-VAE weights for the decoder (optional)."""
    batch_size: int = 16
    """Pairs per optimizer step (and images sampled for the memory comparison)."""
    micro_batch_size: Optional[int] = None
    """Pairs per forward/backward (None: the whole batch): a step runs batch_size / micro_batch_size of them and
    sums their gradients, as --data.batch_size M --trainer.accumulate_grad_batches batch_size/M trains."""
    steps: int = 20
    """Timed steps."""
    warmup: int = 5
    """Untimed steps first."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    precision: str = "auto"
    """Lightning precision: auto = bf16-mixed on CUDA, 32-true on the CPU; 16-mixed on CUDA only (Lightning runs
    bf16-mixed on the CPU instead)."""
    cache: Optional[str] = None
    """Cache for the data-loading row (default: a temporary synthetic one of cache_pairs pairs): a radar-cache
    folder with at least two complete shards, the last one among them (held out)."""
    cache_pairs: int = 256
    """Pairs of the temporary cache (at least 17: two shards, a training one and a held-out one)."""
    memory: bool = True
    """Measure the peak-memory row."""
    activation_checkpointing: Union[bool, Literal["norms", "blocks"]] = False
    """Train with model.optim.activation_checkpointing (recomputed decoder activations): false, norms, blocks."""
    checkpointing_rows: bool = False
    """Also the checkpointing rows: each model.optim.activation_checkpointing mode (false, norms, blocks) with
    its training step's peak memory and time (bare loop, interleaved steps, medians), against false."""
    micro_batch_sizes: Optional[list[int]] = None
    """Micro-batch sizes the checkpointing rows run every mode at (default: micro_batch_size's alone), e.g.
    [16, 2]: the memory and time of each mode with the whole batch and with micro-batches of 2."""
    compiled_row: bool = False
    """Also time the bare loop with model.optim.compile (the compiled_vs_eager row; compiling takes tens of
    seconds, about a minute on a CPU)."""
    seed: int = 0
    """Seed of the random weights and latents."""


def _device(name: str) -> torch.device:
    from radar_train.config import check_device

    return check_device(name, "--args.device")


MIN_SHARD = 16
"""Smallest shard of the temporary cache (_temporary_cache)."""


def check_args(args: "TrainBenchArgs") -> torch.device:
    """Every --args option checked (one line naming it), before any work; returns the device."""
    from radar_train.config import check_positive, preset_problems

    problems = preset_problems("--args.preset", args.preset)  # (ModelArgs named model.preset, not an option here)
    if problems:
        raise ValueError(problems[0])
    check_positive(**{"args.batch_size": args.batch_size, "args.steps": args.steps,
                      "args.cache_pairs": args.cache_pairs})
    check_positive(minimum=0, **{"args.warmup": args.warmup})
    if not 0 <= args.seed < 2 ** 63:  # (the random weights' seed too: it said model.init_seed)
        raise ValueError(f"--args.seed must be in [0, 2**63), got {args.seed}")
    for name, m in [("args.micro_batch_size", args.micro_batch_size)] + [
            ("args.micro_batch_sizes", m) for m in args.micro_batch_sizes or []]:
        if m is not None and (m < 1 or args.batch_size % m):
            raise ValueError(f"--{name} must divide --args.batch_size ({args.batch_size}), got {m}")
    sizes = args.micro_batch_sizes
    if sizes is not None and (not sizes or len(set(sizes)) != len(sizes)):
        raise ValueError(f"--args.micro_batch_sizes must name each size once (at least one), got {sizes}")
    if args.cache is None and args.cache_pairs <= MIN_SHARD:
        # _temporary_cache: shards of max(16, pairs // 4) pairs; the data-loading row needs a training shard
        # and a held-out last one
        raise ValueError(f"--args.cache_pairs must be at least {MIN_SHARD + 1} (two shards of the temporary cache: "
                         f"a training one and a held-out one), got {args.cache_pairs}")
    if args.cache is not None:
        _check_cache(args.cache, args.preset)
    dev = _device(args.device)
    if args.precision not in PRECISIONS:
        raise ValueError(f"--args.precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.precision == "16-mixed" and dev.type == "cpu":  # (Lightning's own swap, with a warning)
        raise ValueError("--args.precision 16-mixed on the CPU: Lightning runs bf16-mixed there instead, so the "
                         "Lightning row would time another precision than the bare loop's float16 autocast; use "
                         "bf16-mixed")
    return dev


def _check_cache(path: str, preset: str) -> None:
    """--args.cache: a radar-cache folder of the preset's latents whose last shard (held out) and at least one
    other are complete, as data_loading reads it; ValueError naming the option otherwise."""
    from pathlib import Path

    from radar_train.cache.layout import scan_cache
    from radar_train.cache.schema import read_manifest

    if not Path(path).is_dir():
        raise ValueError(f"--args.cache {path} is not a cache folder (a radar-cache run --output)")
    try:
        manifest = read_manifest(path)
        num_shards = manifest.num_shards
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--args.cache: {e}") from None
    complete = scan_cache(path, num_shards).complete
    last = num_shards - 1
    if last not in complete or len(complete) < 2:
        not_last = "" if last in complete else f", shard {last} not"
        raise ValueError(f"--args.cache {path}: needs at least two complete shards, the last one among them (a "
                         f"training shard and the held-out last one); {len(complete)} of {num_shards} complete"
                         f"{not_last}")
    from radar_train.models import get_preset

    cfg = get_preset(preset)
    want = [cfg.var.z_channels, cfg.var.patch_nums[-1], cfg.var.patch_nums[-1]]  # (as radar-cache records it)
    if list(manifest.latent_shape) != want:
        raise ValueError(f"--args.cache {path} holds {'x'.join(map(str, manifest.latent_shape))} latents (model "
                         f"{manifest.model.get('preset')}), not the {'x'.join(map(str, want))} of --args.preset "
                         f"{preset}: the data-loading row would time another model's batches against this one's step")


# Lightning's precision names this benchmark times (a fixed list: the GPU run must not depend on a private name of
# whichever Lightning the machine has)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def _precision(args: TrainBenchArgs, dev: torch.device) -> str:
    return args.precision if args.precision != "auto" else ("bf16-mixed" if dev.type == "cuda" else "32-true")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _module(args: TrainBenchArgs, compiled: bool = False):
    from radar_train.config import ModelArgs
    from radar_train.train.module import MonitorArgs, OutputArgs, RadarLoraModule
    from radar_train.train.optim import OptimArgs

    torch.manual_seed(args.seed)
    decoder = ModelArgs(preset=args.preset, vae_checkpoint=args.vae_checkpoint,
                        init_seed=None if args.vae_checkpoint else args.seed)
    return RadarLoraModule(decoder=decoder, monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                           output=OutputArgs(checkpoints=False, export_final=False),
                           optim=OptimArgs(activation_checkpointing=args.activation_checkpointing, compile=compiled))


def _batch(module, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hq = torch.randn(batch_size, *module.latent_shape, generator=g)
    return {"fhat_hq": hq, "fhat_lq": hq + 0.3 * torch.randn(hq.shape, generator=g)}


# what Lightning does for each precision: "-mixed" autocasts, "-true" casts the module and the batches
_MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_TRUE = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


def _autocast(dev: torch.device, precision: str):
    if precision in _MIXED:
        return torch.autocast(device_type=dev.type, dtype=_MIXED[precision])
    return nullcontext()


def micro_batch(args: TrainBenchArgs) -> int:
    """Pairs per forward/backward of a step."""
    return args.micro_batch_size or args.batch_size


def _train_setup(args: TrainBenchArgs, dev: torch.device, steps: int, compiled: bool = False,
                 precision: str = "32-true"):
    """(module on dev, the step's micro-batches on the CPU, trainable params, AdamW, scheduler) as the training
    recipe builds them, in the dtype of a "-true" precision (module and batches)."""
    from radar_train.train.optim import build_optimizer

    dtype = _TRUE.get(precision, torch.float32)
    module = _module(args, compiled).to(dev, dtype).train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, module.optim_args, steps)
    batch = {k: v.to(dtype) for k, v in _batch(module, args.batch_size, args.seed).items()}
    m = micro_batch(args)
    micro = [{k: v[i:i + m] for k, v in batch.items()} for i in range(0, args.batch_size, m)]
    return module, micro, params, opt, sched


def _train_step(state, dev: torch.device, precision: str) -> None:
    """One step of what RadarLoraModule.training_step + Lightning's automatic optimisation do: gradients set to
    None, then each micro-batch's forward and backward of its loss / the number of micro-batches (Lightning's
    accumulation), then clipping, the update and the scheduler."""
    module, micro, params, opt, sched = state
    opt.zero_grad(set_to_none=True)
    for batch in micro:
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        with _autocast(dev, precision):
            loss = module.compute_loss(b)[0]
        (loss / len(micro) if len(micro) > 1 else loss).backward()
    torch.nn.utils.clip_grad_norm_(params, module.optim_args.grad_clip_norm)
    opt.step()
    sched.step()


def bare_loop(args: TrainBenchArgs, dev: torch.device, precision: str) -> float:
    """Seconds per step of a plain PyTorch loop doing the same forward/backward as the Lightning module."""
    state = _train_setup(args, dev, args.warmup + args.steps, precision=precision)
    t0 = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            _sync(dev)
            t0 = time.perf_counter()
        _train_step(state, dev, precision)
    _sync(dev)
    return (time.perf_counter() - t0) / args.steps


def _interleaved_steps(states: list, clock, dev: torch.device, precision: str, rounds: int) -> list[float]:
    """Median seconds of a training step of each state, timed in `rounds` rounds of one step of each, in order
    (radar_train.bench.rounds)."""
    from radar_train.bench.rounds import Job, run_rounds

    def step(state):
        def run() -> dict[str, float]:
            clock.start()
            _train_step(state, dev, precision)
            return clock.mark("step")
        return run

    jobs = [Job(str(i), step(state)) for i, state in enumerate(states)]
    run_rounds(jobs, dev, 0, rounds)
    return [j.median("step") for j in jobs]


def compiled_vs_eager_row(args: TrainBenchArgs) -> dict:
    """The compiled_vs_eager row: the bare loop's step with model.optim.compile against the same step without
    it, in interleaved rounds (radar_train.bench.rounds: one eager step, one compiled step, `args.steps`
    times, medians) after `args.warmup` steps of each, the compiled ones compiling (timed apart)."""
    from radar_train.bench.rounds import PhaseClock
    from radar_train.train.compile import COMPILE_BACKEND

    dev = _device(args.device)
    precision = _precision(args, dev)
    eager, compiled = (_train_setup(args, dev, args.warmup + args.steps, c, precision) for c in (False, True))
    for _ in range(args.warmup):
        _train_step(eager, dev, precision)
    clock = PhaseClock(dev).start()
    for _ in range(args.warmup):
        _train_step(compiled, dev, precision)
    warmup_s = clock.mark("warmup")["warmup"]

    eager_s, compiled_s = _interleaved_steps([eager, compiled], clock, dev, precision, args.steps)
    return {"name": "compiled_vs_eager", "preset": args.preset, "batch_size": args.batch_size, "device": str(dev),
            "precision": precision, "micro_batch_size": micro_batch(args),
            "activation_checkpointing": args.activation_checkpointing, "eager_samples_per_s": args.batch_size / eager_s,
            "compiled_samples_per_s": args.batch_size / compiled_s,
            "ratio": eager_s / compiled_s, "steps": args.steps, "warmup_s": warmup_s, "warmup_steps": args.warmup,
            "backend": COMPILE_BACKEND}


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.batch


def lightning_loop(args: TrainBenchArgs, dev: torch.device, precision: str) -> float:
    """Seconds per step of Trainer.fit on the same module and batch (in micro-batches: accumulate_grad_batches)."""
    import lightning.pytorch as pl

    accumulate = args.batch_size // micro_batch(args)

    class Timer(pl.Callback):
        t0 = t1 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup and batch_idx % accumulate == 0:
                _sync(dev)
                Timer.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == args.warmup + args.steps:
                _sync(dev)
                Timer.t1 = time.perf_counter()

    module = _module(args)
    n = args.warmup + args.steps
    loader = torch.utils.data.DataLoader(_Repeat(_batch(module, micro_batch(args), args.seed), n * accumulate),
                                         batch_size=None)
    with tempfile.TemporaryDirectory() as root, _quiet_lightning():
        trainer = pl.Trainer(accelerator=dev.type, devices=[dev.index or 0] if dev.type == "cuda" else 1,
                             precision=precision, max_steps=n, accumulate_grad_batches=accumulate, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root, callbacks=[Timer()])
        try:
            trainer.fit(module, loader)
        except SystemExit:  # (Lightning turns a Ctrl-C into exit status 1, its line muted here: the interrupt's)
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
    return (Timer.t1 - Timer.t0) / args.steps


@contextlib.contextmanager
def _quiet_lightning():
    """The timed Trainer's own chatter left out of the benchmark's output: its INFO lines (devices, 'Trainer.fit
    stopped', the cloud-logging tip) and the warning that the module's validation_step has no loader (the loop
    times training steps only)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*validation_step.*val_dataloader")
            yield
    finally:
        logger.setLevel(level)


def data_loading(args: TrainBenchArgs, batches: int = 8) -> tuple[float, str]:
    """(seconds per batch from a cache in the main process, cache description)."""
    from radar_train.train.datamodule import CacheSource, PairDataModule

    from radar_train.outputs import temporary_folder

    with temporary_folder("radar-bench-train-") as tmp:
        path, what = args.cache, f"cache {args.cache}"
        if path is None:
            path = _temporary_cache(args, tmp)
            what = f"synthetic cache of {args.cache_pairs} pairs of {args.preset}-shaped latents"
        from radar_train.cache.schema import read_manifest

        last = read_manifest(path).num_shards - 1
        dm = PairDataModule([CacheSource(path, val_shards=str(last))], batch_size=args.batch_size, drop_last=False)
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        next(it)  # opens the stores
        n, t0 = 0, time.perf_counter()
        for _ in range(batches):
            try:
                next(it)
            except StopIteration:
                break
            n += 1
        return (time.perf_counter() - t0) / max(n, 1), what


def _temporary_cache(args: TrainBenchArgs, tmp: str) -> str:
    """A synthetic cache (the real writer, random latents) of the preset's latent shape: reading speed
    does not depend on the values, and no VAR has to run first."""
    from radar_train.cache.synthetic import synthetic_manifest, write_synthetic_cache
    from radar_train.models import get_preset

    preset = get_preset(args.preset)
    shape = (preset.vae.z_channels, preset.var.patch_nums[-1], preset.var.patch_nums[-1])
    shard = max(MIN_SHARD, args.cache_pairs // 4)
    manifest = synthetic_manifest(args.cache_pairs, shard, shape, preset.var.patch_nums,
                                  chunk_size=min(64, shard), num_classes=preset.var.num_classes)
    return str(write_synthetic_cache(f"{tmp}/bench_cache", manifest))


# ---------------------------------------------------------------------------------------------- memory
def _prepare_train(args: TrainBenchArgs, dev: torch.device, precision: str):
    """Build the training state on `dev`; returns the work to measure (two training steps)."""
    state = _train_setup(args, dev, 2, precision=precision)
    return lambda: [_train_step(state, dev, precision) for _ in range(2)]


def _prepare_sampling(args: TrainBenchArgs, dev: torch.device, precision: str):
    """Build VAR + VQ-VAE on `dev`; returns the work to measure (sample the batch and decode it)."""
    from radar_train.config import SamplingConfig
    from radar_train.models import load_models
    from radar_train.sampling import NextScaleSampler, decode_images

    vqvae, var, _, _ = load_models(args.preset, device=dev, init_seed=args.seed)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    if dtype is not None:
        var.cast_body_(dtype)  # as radar-cache samples: the body in bf16, embeddings fp32
    # eager: the graphs engine's first call captures, and each capture's warm-up holds a second KV cache
    sampler = NextScaleSampler(var, vqvae.quantize, SamplingConfig(engine="eager"), autocast_dtype=dtype)
    labels = torch.arange(args.batch_size, device=dev) % var.num_classes

    def work() -> None:
        with torch.inference_mode():
            out = sampler.sample(labels, seeds=list(range(args.batch_size)))
            with torch.autocast(dev.type, dtype) if dtype is not None else nullcontext():
                decode_images(vqvae, out.f_hat)
    return work


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 64
    except OSError:
        return False


def _child(kind: str, args: dict, precision: str, queue) -> None:
    import radar_train.models  # noqa: F401  (imports are part of the baseline)
    import radar_train.sampling  # noqa: F401
    import radar_train.train.module  # noqa: F401

    torch.set_num_threads(1)
    base = _status_kib("VmRSS")
    prepare = _prepare_train if kind == "train" else _prepare_sampling
    work = prepare(TrainBenchArgs(**args), torch.device("cpu"), precision)
    gc.collect()
    reset = _reset_peak_rss()  # build-time transients (e.g. the full random VQ-VAE) are not counted
    work()
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(((peak - base) * 1024, reset))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _peaks(kinds: list[tuple[str, TrainBenchArgs]], dev: torch.device, precision: str) -> tuple[list[int], str]:
    """Peak bytes of each (kind, args) — kind "train" (two training steps) or "sampling" — with the resident
    weights, and how they were measured."""
    if dev.type == "cuda":
        peaks = []
        for kind, args in kinds:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            (_prepare_train if kind == "train" else _prepare_sampling)(args, dev, precision)()
            _sync(dev)
            peaks.append(torch.cuda.max_memory_allocated(dev))
        return peaks, "torch.cuda.max_memory_allocated"
    ctx = mp.get_context("spawn")
    peaks, exact = [], True
    for kind, args in kinds:
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(kind, asdict(args), precision, q))
        # started with Ctrl-C ignored (a terminal's reaches the whole group: the child printed a KeyboardInterrupt
        # traceback from its imports); ended with the run (a stopped run's child printed a traceback, its queue gone)
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            p.start()
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
        try:
            peak, reset = q.get(timeout=1800)
            p.join()
        finally:
            if p.is_alive():
                p.terminate()
                p.join()
            q.close()
        peaks.append(peak)
        exact = exact and reset
    method = ("peak RSS (VmHWM, reset after the models are built) of a spawned process minus its RSS after imports"
              if exact else "peak RSS (ru_maxrss) of a spawned process minus its RSS after imports")
    return peaks, method


def peak_memory(args: TrainBenchArgs, dev: torch.device, precision: str) -> tuple[int, int, str]:
    """(train step peak bytes, sampling peak bytes, method); both include the resident weights."""
    (train, sampling), method = _peaks([("train", args), ("sampling", args)], dev, precision)
    return train, sampling, method


CHECKPOINTING_MODES = (False, "norms", "blocks")
"""The model.optim.activation_checkpointing modes the checkpointing rows compare (the first is the reference)."""


def checkpointing_rows(args: TrainBenchArgs, dev: torch.device, precision: str,
                       measured: Optional[tuple[int, str]] = None, sampling: Optional[int] = None) -> list[dict]:
    """The checkpointing rows: per micro-batch size (`args.micro_batch_sizes`, else the step's own) and mode the
    peak memory of a training step (each measured alone, before any timing state exists) and the bare loop's
    step time, in interleaved rounds (one step of each variant per round, `args.steps` rounds after
    `args.warmup` steps of each; medians), against the first variant. `measured`: the (peak bytes, method) of a
    training step in `args.activation_checkpointing`'s mode and `args`' micro-batches (the memory row's), not
    measured again; `sampling`: the peak bytes of VAR sampling of the batch (the memory row's), which each row
    is compared with too."""
    from radar_train.bench.rounds import PhaseClock
    from radar_train.train.optim import OptimArgs

    def mode_of(a: TrainBenchArgs):
        return OptimArgs(activation_checkpointing=a.activation_checkpointing).decoder_checkpointing

    sizes = args.micro_batch_sizes or [micro_batch(args)]
    variants = [replace(args, micro_batch_size=m, activation_checkpointing=mode)
                for m in sizes for mode in CHECKPOINTING_MODES]
    known = [measured is not None and micro_batch(a) == micro_batch(args) and mode_of(a) == mode_of(args)
             for a in variants]
    fresh, method = _peaks([("train", a) for a, k in zip(variants, known) if not k], dev, precision)
    fresh = iter(fresh)
    peaks = [measured[0] if k else next(fresh) for k in known]
    states = [_train_setup(a, dev, args.warmup + args.steps, precision=precision) for a in variants]
    for state in states:
        for _ in range(args.warmup):
            _train_step(state, dev, precision)
    times = _interleaved_steps(states, PhaseClock(dev), dev, precision, args.steps)
    return [{"name": "checkpointing", "preset": args.preset, "batch_size": args.batch_size, "device": str(dev),
             "precision": precision, "micro_batch_size": micro_batch(a),
             "activation_checkpointing": a.activation_checkpointing, "train_step_mib": peak / 2**20,
             "step_ms": t * 1e3, "ratio": peak / peaks[0], "time_ratio": t / times[0], "steps": args.steps,
             "method": method, **({"vs_sampling": peak / sampling} if sampling else {})}
            for a, peak, t in zip(variants, peaks, times)]


# ---------------------------------------------------------------------------------------------- driver
def run_train_benchmark(args: TrainBenchArgs = TrainBenchArgs(), log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """The three rows described in the module docstring. `log` gets each row as it finishes, and after the
    bare loop an estimate of the time the rest takes (from the bare loop's own time)."""
    from radar_train.progress import format_duration

    dev = check_args(args)
    precision = _precision(args, dev)
    common = {"preset": args.preset, "batch_size": args.batch_size, "device": str(dev), "precision": precision,
              "micro_batch_size": micro_batch(args), "activation_checkpointing": args.activation_checkpointing}
    t0 = time.perf_counter()
    bare = bare_loop(args, dev, precision)
    took = time.perf_counter() - t0
    # the Lightning loop runs the same steps; the memory row runs a training step and a sampling in two children
    log(f"  bare loop: {took:.1f} s; the rest should take about {format_duration(took * (2 + 2 * args.memory))} "
        f"(Lightning loop, data loading{', peak memory' if args.memory else ''})")
    light = lightning_loop(args, dev, precision)
    rows = [{"name": "lightning_vs_bare", **common, "bare_samples_per_s": args.batch_size / bare,
             "lightning_samples_per_s": args.batch_size / light, "ratio": bare / light, "target": ">= 0.95"}]
    log(f"  lightning_vs_bare: {rows[-1]['ratio']:.3f}")
    load, what = data_loading(args)
    rows.append({"name": "data_vs_step", **common, "data_ms_per_batch": load * 1e3, "step_ms": bare * 1e3,
                 "ratio": load / bare, "source": what})
    log(f"  data_vs_step: {rows[-1]['ratio']:.3f}")
    measured = sample_b = None
    if args.memory:
        train_b, sample_b, method = peak_memory(args, dev, precision)
        measured = (train_b, method)
        rows.append({"name": "memory_train_vs_sampling", **common, "train_step_mib": train_b / 2**20,
                     "var_sampling_mib": sample_b / 2**20, "ratio": train_b / sample_b, "target": "<= 0.5",
                     "method": method})
        log(f"  memory_train_vs_sampling: {rows[-1]['ratio']:.3f}")
    if args.checkpointing_rows:
        grid = checkpointing_rows(args, dev, precision, measured, sample_b)
        rows += grid
        log("  checkpointing: " + ", ".join(f"{_variant(r)} {r['ratio']:.3f}x memory, {r['time_ratio']:.3f}x time"
                                            for r in grid))
    if args.compiled_row:
        rows.append(compiled_vs_eager_row(args))
        log(f"  compiled_vs_eager: {rows[-1]['ratio']:.3f}")
    return rows


def row_detail(r: dict) -> str:
    """What a row measured, in words (the console table here, the markdown tables of radar_train.bench.tables)."""
    if r["name"] == "lightning_vs_bare":
        return (f"bare {_rate(r['bare_samples_per_s'])} samples/s, Lightning {_rate(r['lightning_samples_per_s'])} "
                f"samples/s")
    if r["name"] == "data_vs_step":
        return f"load {r['data_ms_per_batch']:.1f} ms/batch vs step {r['step_ms']:.1f} ms ({r['source']})"
    if r["name"] == "compiled_vs_eager":
        return (f"compiled ({r['backend']}) {_rate(r['compiled_samples_per_s'])} samples/s, eager "
                f"{_rate(r['eager_samples_per_s'])} samples/s (medians of {r['steps']} interleaved steps each); "
                f"warm-up with the compilation {r['warmup_s']:.1f} s ({r['warmup_steps']} steps)")
    if r["name"] == "checkpointing":
        vs = f", {r['vs_sampling']:.3f}x VAR sampling of the batch" if "vs_sampling" in r else ""
        steps = f"medians of {r['steps']} interleaved steps" if r["steps"] > 1 else "one timed step each"
        return (f"{_variant(r)}: train step {r['train_step_mib']:.0f} MiB{vs}, {r['step_ms']:.0f} ms "
                f"({r['time_ratio']:.3f}x the time of the first variant; {steps})")
    return (f"train step {r['train_step_mib']:.0f} MiB{_micro(r)} vs VAR sampling {r['var_sampling_mib']:.0f} MiB "
            f"({r['method']})")


def _rate(x: float) -> str:
    """A rate with one decimal, or three significant digits below 10 (0.0985, not 0.1: a CPU step of a large preset)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _pairs_per_pass(r: dict) -> int:
    """A row's micro-batch size (rows from before micro-batches: the batch)."""
    return r.get("micro_batch_size") or r["batch_size"]


def _micro(r: dict) -> str:
    """' in micro-batches of M' where a row's step ran the batch in several."""
    m = _pairs_per_pass(r)
    return f" in micro-batches of {m}" if m < r["batch_size"] else ""


def _variant(r: dict) -> str:
    """A checkpointing row's variant in words: 'micro-batches of 2, activation_checkpointing blocks'."""
    m = _pairs_per_pass(r)
    size = f"micro-batches of {m}" if m < r["batch_size"] else "whole batch"
    return f"{size}, activation_checkpointing {str(r['activation_checkpointing']).lower()}"


def format_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        target = f"  target {r['target']}" if "target" in r else ""
        lines.append(f"{r['name']:<26} ratio {r['ratio']:.3f}{target}  {row_detail(r)}")
    head = rows[0]
    mode = head.get("activation_checkpointing")
    ckpt = f", activation checkpointing {'blocks' if mode is True else mode}" if mode else ""
    ckpt += f",{_micro(head)}" if _micro(head) else ""
    return (f"# train benchmark: {head['preset']}, batch {head['batch_size']}, {head['device']}, {head['precision']}{ckpt}\n"
            + "\n".join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    import json
    import sys

    from jsonargparse import CLI

    args = CLI(TrainBenchArgs, args=argv, as_positional=False)
    logging.basicConfig(level=logging.WARNING)
    print(f"train benchmark: {args}", flush=True)
    rows = run_train_benchmark(args)
    print(format_table(rows))
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
