"""The radar-cache recipe: the same labels and seeds through vanilla VAR (HQ) and VAR + acceleration (LQ),
written as shards of a Zarr cache. Resumable (complete shards are skipped, temporary ones redone) and
split across workers (worker I of N owns the shards s ≡ I mod N).

Read top to bottom: validate -> workers and device -> models and method -> plan and manifest (create or
check) -> print the plan -> for each pending shard: generate in batches, hand to the background writer.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

import radar_train
from radar_train.cache import schema
from radar_train.cache.config import CacheArgs
from radar_train.cache.layout import HEARTBEAT_S, clear_temporary, scan_cache, touch_temporary
from radar_train.cache.plan import Plan
from radar_train.cache.schema import Manifest
from radar_train.cache.workers import WorkerSplit, autocast_dtype, resolve_device, resolve_workers
from radar_train.cache.writer import ShardWriter, begin_shard, writer_info

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    output: str
    split: WorkerSplit
    shards_owned: list[int]
    shards_skipped: list[int] = field(default_factory=list)
    shards_written: list[int] = field(default_factory=list)
    temporary_cleared: int = 0
    samples_written: int = 0
    seconds: float = 0.0
    generate_seconds: float = 0.0
    created: bool = False


def build_manifest(args: CacheArgs, plan: Plan, var_cfg, vae_id, var_id, method, precision: str) -> Manifest:
    """The manifest of a run (var_cfg: the VAR's VARConfig)."""
    P = var_cfg.patch_nums[-1]
    return Manifest(
        format_version=schema.FORMAT_VERSION, radar_train_version=radar_train.__version__, plan=plan.to_dict(),
        model={"preset": args.model.preset, "vae": vae_id.to_dict(), "var": var_id.to_dict(),
               "vae_checkpoint": args.model.vae_checkpoint, "var_checkpoint": args.model.var_checkpoint},
        sampling=asdict(args.sampling), accel=method.describe(), latent_shape=[var_cfg.z_channels, P, P],
        latent_dtype=args.storage.dtype, patch_nums=[int(p) for p in var_cfg.patch_nums], precision=precision,
        storage=asdict(args.storage), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def generate_shard_arrays(sampler, method, plan: Plan, shard: int, batch_size: int, latent_dtype: str,
                          on_batch: Optional[Callable[[int], None]] = None) -> dict[str, np.ndarray | torch.Tensor]:
    """All arrays of one shard in their storage dtypes: label, seed, index as numpy; the latents and indices
    as tensors still on the sampler's device (the writer thread copies them, so that the generating
    thread never waits for the device). Batches never span shards, so a shard's content depends only on
    the plan and the batch size; with per_sample noise its token indices do not depend on the batch size
    either, and its latents only up to float round-off (the φ convolutions are not bit-identical across
    batch sizes: ~5e-7 on the tiny model)."""
    from radar_train.sampling import generate_pairs

    start, stop = plan.shard_range(shard)
    labels, seeds = plan.labels_seeds(start, stop)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in schema.LATENT_ARRAYS + schema.INDEX_ARRAYS}
    dt = getattr(torch, latent_dtype)
    for a in range(0, stop - start, batch_size):
        # the labels on the host: the sampler checks them there and copies them without blocking (a plain copy to a
        # GPU waits for its queued work: the previous batch)
        lab = torch.from_numpy(labels[a: a + batch_size])
        pair = generate_pairs(sampler, lab, method, seeds=torch.from_numpy(seeds[a: a + batch_size]))
        # results stay on the device: no synchronisation here
        out[schema.FHAT_HQ].append(pair.hq.f_hat.to(dt))
        out[schema.FHAT_LQ].append(pair.lq.f_hat.to(dt))
        out[schema.INDICES_HQ].append(torch.cat(pair.hq.indices, dim=1).to(torch.int16))
        out[schema.INDICES_LQ].append(torch.cat(pair.lq.indices, dim=1).to(torch.int16))
        if on_batch is not None:
            on_batch(lab.shape[0])
    arrays: dict[str, np.ndarray | torch.Tensor] = {k: torch.cat(v) for k, v in out.items()}
    arrays[schema.LABEL] = labels.astype(np.int16)
    arrays[schema.SEED] = seeds.astype(np.int64)
    arrays[schema.INDEX] = np.arange(start, stop, dtype=np.int64)
    return arrays


def describe_run(manifest: Manifest, plan: Plan, split: WorkerSplit, owned: list[int], done: list[int],
                 output: str, device: str, batch_size: int) -> str:
    m = manifest.model
    finished = set(done)
    pending = [s for s in owned if s not in finished]
    n_pending = sum(plan.shard_range(s)[1] - plan.shard_range(s)[0] for s in pending)
    accel = ", ".join(f"{k}={v}" for k, v in manifest.accel.items() if k != "method" and v is not None)
    return "\n".join([
        f"radar-cache: {output}",
        f"  plan:    {plan.describe()}",
        f"  workers: {split.num_workers} ({split.source}); this is worker {split.worker_index}: "
        f"{len(owned)} shards, {len(done)} done, {len(pending)} to write ({n_pending} samples)",
        f"  models:  {m['preset']} (vae {m['vae']['value'][:16]}, var {m['var']['value'][:16]})",
        f"  method:  {manifest.accel['method']}{' (' + accel + ')' if accel else ''}; sampling "
        f"{', '.join(f'{k}={v}' for k, v in manifest.sampling.items())}",
        f"  latents: {'x'.join(map(str, manifest.latent_shape))} {manifest.latent_dtype}; compute "
        f"{manifest.precision} on {device}, batch {batch_size}",
    ])


@dataclass
class CacheJob:
    """A validated run, models loaded and the manifest created or checked: what `run` will write."""

    args: CacheArgs
    split: WorkerSplit
    device: str
    manifest: Manifest
    plan: Plan
    sampler: object  # NextScaleSampler
    method: object  # AccelMethod
    created: bool

    @property
    def output(self) -> Path:
        return Path(self.args.output)

    def describe(self, done: list[int]) -> str:
        return describe_run(self.manifest, self.plan, self.split, self.split.shards(self.plan.num_shards), done,
                            str(self.output), self.device, self.args.batch_size)

    def run(self, print_fn: Callable[[str], None] = print) -> RunSummary:
        """Print the plan, clear this worker's temporary shards, write its pending shards."""
        t0 = time.perf_counter()
        plan, out = self.plan, self.output
        owned = self.split.shards(plan.num_shards)
        scan = scan_cache(out, plan.num_shards)
        summary = RunSummary(str(out), self.split, owned, shards_skipped=[s for s in owned if s in scan.complete],
                             created=self.created)
        print_fn(self.describe(summary.shards_skipped))
        summary.temporary_cleared = len(clear_temporary(scan, owned))
        pending = scan.pending(owned)
        info = writer_info(self.split.worker_index, self.split.num_workers, self.device)
        total = sum(plan.shard_range(s)[1] - plan.shard_range(s)[0] for s in pending)
        writer = ShardWriter(out, self.manifest, self.args.writer)
        begun: list[Path] = []
        handed_all = False
        try:
            with _progress(total, self.args.progress) as bar, writer:
                for s in pending:
                    tmp = begin_shard(out, s, info)
                    begun.append(tmp)
                    tg = time.perf_counter()
                    arrays = generate_shard_arrays(self.sampler, self.method, plan, s, self.args.batch_size,
                                                   self.manifest.latent_dtype, on_batch=_beating(tmp, bar.update))
                    summary.generate_seconds += time.perf_counter() - tg
                    writer.submit(tmp, s, plan.shard_range(s)[0], arrays)
                handed_all = True
                writer.wait()
        except BaseException as e:  # Ctrl-C, an error: the writer stopped (its exit waits); its unfinished shards go
            for tmp in begun:
                shutil.rmtree(tmp, ignore_errors=True)  # (a committed one was renamed: nothing there)
            # an interrupt (Ctrl-C, the CLI's SIGTERM) while the last shard, handed over, was written cut nothing
            # short (the writer's exit finished it): the run is complete (it ended as stopped, exit 143, which
            # failed a SLURM array task and cancelled the verify and training jobs after it)
            if not (handed_all and not isinstance(e, Exception)
                    and (not pending or pending[-1] in scan_cache(out, plan.num_shards).complete)):
                raise
            writer.written += [s for s in pending[-1:] if s not in writer.written]
            print_fn("radar-cache: interrupted as its last shard was written, which finished: the run is complete")
        summary.shards_written = sorted(writer.written)
        # those committed by this process (a shard another worker completed first is not)
        summary.samples_written = sum(plan.shard_range(s)[1] - plan.shard_range(s)[0] for s in summary.shards_written)
        summary.seconds = time.perf_counter() - t0
        print_fn(f"radar-cache: worker {self.split.worker_index}/{self.split.num_workers} wrote "
                 f"{len(summary.shards_written)} shards ({summary.samples_written} samples), skipped "
                 f"{len(summary.shards_skipped)} complete, cleared {summary.temporary_cleared} temporary, "
                 f"in {summary.seconds:.1f} s")
        return summary


def validate(args: CacheArgs, here: bool = True) -> list[str]:
    """Every problem found without loading a model: fields, plan and acceleration settings (their files
    included) against the preset, workers, device, checkpoint files. `here` False: the run is for another
    machine (a login node checking a job's settings), so a CUDA device need not exist on this one."""
    from radar_train.accel import build_accel
    from radar_train.config import check_device
    from radar_train.engine import resolve_engine
    from radar_train.models import get_preset

    problems = args.problems()
    try:
        preset = get_preset(args.model.preset)
    except ValueError as e:
        problems.append(str(e))
        preset = None
    if preset is not None:
        try:  # (against the preset's classes; a plan whose fields are wrong has been reported above)
            if not any(p.startswith("plan.") or " plan." in p for p in problems):
                Plan.from_args(args.plan, preset.var.num_classes)
        except ValueError as e:
            problems.append(str(e))
        try:  # (against the weights, e.g. a mask calibrated for others, once they are loaded)
            build_accel(args.accel, preset.var.patch_nums, preset.var.depth)
        except (ValueError, OSError) as e:
            problems.append(str(e))
    def device_and_engine() -> None:
        device = check_device(args.device, here=here)  # ("auto" is always a device)
        # the engine on it (graphs on a CPU: the sampler said so once the models were loaded, after `--check` had
        # said the run was fine); `auto` is this machine's device only `here`; the noise of every cache
        if args.device != "auto" or here:
            resolve_engine(args.sampling.engine, device, "per_sample")

    checks = [device_and_engine]
    if args.num_workers is None or args.num_workers >= 1:  # (a count below 1 is among the fields' problems)
        checks.append(lambda: resolve_workers(args.num_workers, args.worker_index))
    for check in checks:
        try:
            check()
        except ValueError as e:
            problems.append(str(e))
    for name in ("vae_checkpoint", "var_checkpoint"):
        path = getattr(args.model, name)
        if path is None or Path(path).is_file():
            continue
        if str(path) == "":
            problems.append(f"model.{name} is empty: name the weights file (or leave the option out)")
        elif Path(path).is_dir():
            problems.append(f"model.{name} {path} is a folder, expected the weights file")
        elif Path(path).exists():
            problems.append(f"model.{name} {path} is not a regular file (a device, pipe or socket)")
        else:
            problems.append(f"model.{name} {path} does not exist (download the official weights yourself "
                            f"and put them there, or point model.{name} at them)")
    return problems


def read_resumable_manifest(cache_dir: str) -> Manifest:
    """The manifest of the existing cache `cache_dir`; ValueError naming it if this version cannot write more
    of its pairs (a method recorded by an older radar_train that no configuration reproduces now)."""
    from radar_train.accel import not_reproducible

    stored = schema.read_manifest(cache_dir)
    reason = not_reproducible(stored.accel)
    if reason:
        raise ValueError(f"{Path(cache_dir) / schema.MANIFEST_NAME}: {reason}")
    return stored


def check_existing_cache(args: CacheArgs) -> list[str]:
    """`run --check` on a login node, after `validate` found nothing: the problems a run would meet once its
    weights are loaded, found without loading them: checkpoint files that are not the model's (their headers
    and shapes), and with the weights' identities (the files' sha256, or the preset's seed) an acceleration file
    calibrated for other weights, and an existing cache manifest that differs
    (the fields the run would name). The precision is compared only where this machine can resolve it (an
    explicit precision, or an explicit device)."""
    from radar_train.accel import build_accel
    from radar_train.models import check_checkpoint_files, get_preset, model_identities

    preset = get_preset(args.model.preset)
    m = args.model
    check_checkpoint_files(m.preset, m.vae_checkpoint, m.var_checkpoint)
    vae_id, var_id = model_identities(m.preset, m.vae_checkpoint, m.var_checkpoint, m.init_seed)
    try:
        method = build_accel(args.accel, preset.var.patch_nums, preset.var.depth, var_id)
    except ValueError as e:
        return [str(e)]
    path = Path(args.output) / schema.MANIFEST_NAME
    if not path.is_file():
        return []
    stored = read_resumable_manifest(args.output)
    from radar_train.cache.workers import SHORT_PRECISIONS

    precision = SHORT_PRECISIONS.get(args.precision, args.precision)
    if precision == "auto" and args.device != "auto":
        precision = "bfloat16" if args.device.startswith("cuda") else "float32"
    if precision == "auto":  # the job's device decides; the run compares it
        precision = stored.precision
    wanted = build_manifest(args, Plan.from_args(args.plan, preset.var.num_classes), preset.var, vae_id, var_id,
                            method, precision)
    diffs = schema.manifest_differences(stored, wanted)
    return [schema.differing_manifest_message(path, diffs)] if diffs else []


def prepare_job(args: CacheArgs) -> CacheJob:
    """Validate (every problem at once), resolve workers and device, load the models, build the method
    and plan, and create or check the manifest (ValueError naming the differing fields)."""
    from radar_train.accel import build_accel
    from radar_train.models import load_models
    from radar_train.sampling import NextScaleSampler

    problems = validate(args)
    if problems:
        raise ValueError("invalid radar-cache configuration: " + "; ".join(problems))
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    split = resolve_workers(args.num_workers, args.worker_index)
    device = resolve_device(args.device, split)
    ac_dtype, precision = autocast_dtype(args.precision, device)
    m = args.model
    log.info("worker %d of %d (%s): loading %s on %s", split.worker_index, split.num_workers, split.source,
             m.preset, device)
    vqvae, var, vae_id, var_id = load_models(m.preset, m.vae_checkpoint, m.var_checkpoint, device, m.init_seed)
    method = build_accel(args.accel, var.patch_nums, var.depth, var_id)
    plan = Plan.from_args(args.plan, var.num_classes)
    if ac_dtype is not None:
        var.cast_body_(ac_dtype)  # no per-call weight casts under autocast; embeddings stay fp32
    # the sampler checks its engine against the device: before the manifest is written
    sampler = NextScaleSampler(var, vqvae.quantize, args.sampling, autocast_dtype=ac_dtype)
    if (Path(args.output) / schema.MANIFEST_NAME).is_file():
        read_resumable_manifest(args.output)
    manifest, created = schema.create_or_check_manifest(
        args.output, build_manifest(args, plan, var.config, vae_id, var_id, method, precision))
    return CacheJob(args, split, device, manifest, plan, sampler, method, created)


def run_cache(args: CacheArgs, print_fn: Callable[[str], None] = print) -> RunSummary:
    """Create or resume the cache `args.output` and write this worker's pending shards."""
    return prepare_job(args).run(print_fn)


def _beating(tmp: Path, on_batch: Callable[[int], None]) -> Callable[[int], None]:
    """`on_batch` that also marks the temporary shard `tmp` as being written, at most every HEARTBEAT_S, so
    that a run of the same shard on another host leaves it alone (layout.live_writer)."""
    last = [time.monotonic()]

    def call(n: int) -> None:
        on_batch(n)
        if time.monotonic() - last[0] >= HEARTBEAT_S:
            touch_temporary(tmp)
            last[0] = time.monotonic()

    return call


def _progress(total: int, enabled: bool):
    """A bar on a terminal, `radar-cache: pairs 160/4096 (3.9 %), 12.3 pairs/s, ETA 5 min 20 s` lines in a log."""
    from radar_train.progress import Progress

    return Progress(total, "radar-cache", "pairs", enabled=enabled and total > 0)
