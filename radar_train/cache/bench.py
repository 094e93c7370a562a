"""radar-cache benchmark, as ratios and rates:

- write overhead: `radar-cache run` wall time / bare `generate_pairs` wall time for the same samples and
  batches (models loaded once, outside both timings; best of `repeats`, alternating); target <= 1.03;
- reader: PairDataset + BlockShuffleSampler through a DataLoader with 0 and 2 workers, pairs/s over one
  epoch after the first batch, on a synthetic cache of 256px-shaped latents (32x16x16 float16 + the
  10-scale token indices); target >= 5,000 pairs/s on 2 cores;
- bytes on disk per pair, for the synthetic cache and for the generated one.

    python -m radar_train.cache.bench [--cache_config configs/cache/tiny.yaml] [--overrides '[...]'] [--num_pairs 8192]
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from radar_train.cache.layout import dir_bytes

PARTS = ("generation", "reader")
READER_BATCH = 64  # pairs per batch of the reader benchmark; its first batch is not timed


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_generation(job, batches: Sequence[tuple[int, int]]) -> float:
    """Seconds to generate the pairs of `batches` ([start, stop) sample ranges) with nothing else."""
    from radar_train.sampling import generate_pairs

    t = time.perf_counter()
    for a, b in batches:
        labels, seeds = job.plan.labels_seeds(a, b)
        generate_pairs(job.sampler, torch.from_numpy(labels), job.method, seeds=torch.from_numpy(seeds))
    _sync(job.device)
    return time.perf_counter() - t


def bench_generation(config: str, overrides: Sequence[str], root: Path, repeats: int = 3,
                     log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """radar-cache run vs bare generation of the same samples; plus the generated cache's bytes per pair.
    `log` gets a line per repeat (the first with the expected total time)."""
    from radar_train.progress import format_duration

    from radar_train.cache.generate import prepare_job
    from radar_train.cache.schema import create_or_check_manifest
    from radar_train.cli.cache import _normalise, build_run_parser, run_args

    argv = _normalise(["--config", config, *overrides, "--progress", "false", "--output", str(root / "gen-0")])
    job = prepare_job(run_args(build_run_parser().parse_args(argv)))
    plan, bs = job.plan, job.args.batch_size
    batches = [(a, min(a + bs, plan.shard_range(s)[1])) for s in range(plan.num_shards)
               for a in range(plan.shard_range(s)[0], plan.shard_range(s)[1], bs)]
    bare_generation(job, batches[:1])  # warm-up
    bare, cached = [], []
    t_start = time.perf_counter()
    for r in range(repeats):
        bare.append(bare_generation(job, batches))
        out = root / f"gen-{r}"
        if out.exists():
            shutil.rmtree(out)
        create_or_check_manifest(out, job.manifest)
        job.args = dataclasses.replace(job.args, output=str(out))
        t = time.perf_counter()
        job.run(print_fn=lambda *_: None)
        _sync(job.device)
        cached.append(time.perf_counter() - t)
        line = f"  generation repeat {r + 1}/{repeats}: bare {bare[-1]:.2f} s, radar-cache {cached[-1]:.2f} s"
        if r + 1 < repeats:
            line += f", ETA {format_duration((repeats - r - 1) * (time.perf_counter() - t_start) / (r + 1))}"
        log(line)
    n = plan.num_samples
    what = (f"{n} pairs, {job.manifest.model['preset']} + {job.manifest.accel['method']}, {job.device} "
            f"{job.manifest.precision}, batch {bs}, best of {repeats}")
    out = root / f"gen-{repeats - 1}"
    return [
        {"metric": "write_overhead", "value": min(cached) / min(bare), "unit": "x bare generation",
         "target": "<= 1.03", "detail": f"radar-cache {min(cached):.2f} s vs bare generate_pairs "
                                         f"{min(bare):.2f} s ({what})"},
        {"metric": "generated_bytes_per_pair", "value": dir_bytes(out) / n, "unit": "B",
         "target": "", "detail": f"{job.manifest.storage['compressor']}, latents "
                                 f"{'x'.join(map(str, job.manifest.latent_shape))} {job.manifest.latent_dtype}"},
    ]


def bench_reader(root: Path, num_pairs: int = 8192, workers: Sequence[int] = (0, 2), batch_size: int = READER_BATCH,
                 latent_shape: Sequence[int] = (32, 16, 16), dtype: str = "float16", chunk_size: int = 64,
                 shard_size: int = 1024, compressor: str = "lz4",
                 log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Reader pairs/s on a synthetic cache of the given latent shape; bytes per pair. `log` gets each row."""
    from torch.utils.data import DataLoader

    from radar_train.cache.reader import BlockShuffleSampler, PairDataset
    from radar_train.cache.synthetic import synthetic_manifest, write_synthetic_cache

    cache = root / "reader"
    m = synthetic_manifest(num_pairs, shard_size, latent_shape, dtype=dtype, chunk_size=chunk_size,
                           compressor=compressor)
    write_synthetic_cache(cache, m)
    shape = f"{'x'.join(map(str, latent_shape))} {dtype}, {compressor}, chunk {chunk_size}"
    raw = 2 * np.dtype(dtype).itemsize * int(np.prod(latent_shape)) + 2 * 2 * m.index_length + 2 + 8 + 8
    rows = [{"metric": "synthetic_bytes_per_pair", "value": dir_bytes(cache) / num_pairs, "unit": "B", "target": "",
             "detail": f"{shape}, noise data; raw arrays {raw} B"}]
    for w in workers:
        ds = PairDataset(cache)
        loader = DataLoader(ds, batch_size=batch_size, sampler=BlockShuffleSampler(ds, seed=0), num_workers=w)
        it = iter(loader)
        first = len(next(it)["index"])
        t = time.perf_counter()
        n = sum(len(b["index"]) for b in it)
        rate = n / (time.perf_counter() - t)
        rows.append({"metric": f"reader_pairs_per_s_workers{w}", "value": rate, "unit": "pairs/s",
                     "target": ">= 5000", "detail": f"{num_pairs - first} pairs after the first batch, batch "
                                                    f"{batch_size}, {shape}, torch threads {torch.get_num_threads()}"})
        log(f"  {rows[-1]['metric']}: {rate:.0f} pairs/s")
    return rows


def check_overrides(config: str, overrides: Sequence[str]) -> None:
    """ValueError naming --overrides if radar-cache run does not take them with `config` (an unknown option was
    said as radar-bench's own, after the run's header, pointing to radar-bench's help)."""
    from jsonargparse import ArgumentError

    from radar_train.cli.cache import _normalise, build_run_parser
    from radar_train.cli.common import _parse_error  # (run_main's wording of a parse error)

    argv = _normalise(["--config", config, *overrides, "--progress", "false", "--output", "unused"])
    try:
        build_run_parser().parse_args(argv)
    except ArgumentError as e:
        raise ValueError(f"--overrides {list(overrides)}: {_parse_error(e)} (`radar-cache run --help` lists the "
                         f"options)") from None


def check_options(num_pairs: int, workers: Sequence[int], repeats: int, parts: Sequence[str]) -> None:
    """ValueError naming every option (--num_pairs, --workers, --repeats, --parts) that would measure nothing
    or fail after the work began: no part or an unknown one, fewer than one repeat, a reader with no pair past
    its first (untimed) batch, no worker count or a negative one."""
    p = []
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        p.append(f"--parts must name generation and/or reader, got {list(parts)}")
    if repeats < 1:
        p.append(f"--repeats must be >= 1, got {repeats}")
    if "reader" in parts:
        if num_pairs <= READER_BATCH:
            p.append(f"--num_pairs must be > {READER_BATCH} (the reader times the pairs after its first batch of "
                     f"{READER_BATCH}), got {num_pairs}")
        if not workers:
            p.append("--workers is empty: give the DataLoader worker counts to time, e.g. [0, 2]")
        elif min(workers) < 0:
            p.append(f"--workers: {min(workers)} is negative (0 loads in the main process)")
    if p:
        raise ValueError("; ".join(p))


def run_cache_benchmark(config: str = "configs/cache/tiny.yaml", overrides: Sequence[str] = (),
                        num_pairs: int = 8192, workers: Sequence[int] = (0, 2), repeats: int = 3,
                        root: Optional[str] = None, parts: Sequence[str] = ("generation", "reader"),
                        log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """The radar-cache benchmark rows ({"metric", "value", "unit", "target", "detail"}) of `parts`;
    temporary files go to a fresh folder under `root` (default: the system's), removed afterwards. `log` gets
    a line per generation repeat and per reader row as they finish."""
    from radar_train.outputs import temporary_folder

    check_options(num_pairs, workers, repeats, parts)
    with temporary_folder("radar-cache-bench-", root) as tmp:
        rows = bench_generation(config, overrides, tmp, repeats, log=log) if "generation" in parts else []
        return rows + (bench_reader(tmp, num_pairs, workers, log=log) if "reader" in parts else [])


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'metric':<28} {'value':>12} {'unit':<18} {'target':<9} detail"]
    for r in rows:
        lines.append(f"{r['metric']:<28} {r['value']:>12.3f} {r['unit']:<18} {r['target']:<9} {r['detail']}")
    return "\n".join(lines)


def main(cache_config: str = "configs/cache/tiny.yaml", overrides: Optional[list[str]] = None, num_pairs: int = 8192,
         workers: list[int] = [0, 2], repeats: int = 3, root: Optional[str] = None,  # noqa: B006
         parts: list[str] = ["generation", "reader"]) -> int:  # noqa: B006
    """Benchmark radar-cache: write overhead vs bare generation, reader pairs/s, bytes per pair.

    Args:
        cache_config: radar-cache config for the generation part (the reader part does not read it).
        overrides: extra `radar-cache run` arguments, e.g. ["--plan.images_per_class", "4", "--device", "cpu"].
        num_pairs: pairs in the synthetic 256px-shaped cache read by the reader benchmark.
        workers: DataLoader worker counts to measure.
        repeats: timed repeats of the generation part (best is kept).
        root: folder for temporary files (default: the system's).
        parts: which benchmarks to run: generation, reader.
    """
    print(format_rows(run_cache_benchmark(cache_config, overrides or [], num_pairs, workers, repeats, root, parts)))
    return 0


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    sys.exit(CLI(main))
