"""radar-bench: methods timed side by side (accel), and the stage benchmarks."""
from __future__ import annotations

import json as _json
import sys
from pathlib import Path
from typing import Optional

from jsonargparse import CLI

from radar_train.bench.accel import BenchSetup
from radar_train.train.bench import TrainBenchArgs
from radar_train.config import SamplingConfig


def _write_json(rows: list[dict], path: Optional[str]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(_json.dumps(rows, indent=2))
        print(f"wrote {path}")


def accel(setup: BenchSetup = BenchSetup(), methods: list[str] = ["none", "fastvar", "stagevar"],
          sampling: SamplingConfig = SamplingConfig(), json: Optional[str] = None) -> int:
    """Sampling time per image per acceleration method, speed-up vs vanilla, forked pair cost.

    Sampling time per image (transformer + quantizer) per acceleration method, speedup vs vanilla,
    and a forked HQ/LQ pair vs the two runs done separately; the decode on its own row.

    Args:
        setup: model preset (random weights), batch size, device, dtype, warm-up and repeats.
        methods: method specs: none, fastvar, stagevar, fastvar:aggressive, fastvar:mild, stagevar:paper.
        sampling: sampler settings (FID protocol by default).
        json: also write the rows to this JSON file (keys method, seconds_per_image, speedup_vs_vanilla, pair_vs_separate).
    """
    from radar_train.bench.accel import format_table, run_accel_benchmark

    rows = run_accel_benchmark(setup, methods, sampling)
    print(format_table(rows))
    _write_json(rows, json)
    return 0


def pipeline(setup: BenchSetup = BenchSetup(preset="tiny", batch_size=8), methods: list[str] = ["none", "fastvar", "stagevar"],
             sampling: SamplingConfig = SamplingConfig(), json: Optional[str] = None) -> int:
    """Adapter cost at inference and end-to-end images/s per method.

    Adapter cost at inference (merged / unmerged decode vs the base decoder) and end-to-end images/s
    per method with and without a merged adapter.

    Args:
        setup: model preset (random weights), batch size, device, dtype, warm-up and repeats.
        methods: method specs: none, fastvar, stagevar, fastvar:aggressive, stagevar:paper, ...
        sampling: sampler settings.
        json: also write the rows to this JSON file.
    """
    from radar_train.bench.pipeline import format_table, run_pipeline_benchmark

    rows = run_pipeline_benchmark(setup, methods, sampling)
    print(format_table(rows))
    _write_json(rows, json)
    return 0


def cache(cache_config: str = "configs/cache/tiny.yaml", overrides: list[str] = [], num_pairs: int = 8192,
          workers: list[int] = [0, 2], repeats: int = 3, parts: list[str] = ["generation", "reader"],
          json: Optional[str] = None) -> int:
    """radar-cache: write overhead vs bare pair generation, reader throughput, bytes per pair.

    Wall time vs bare pair generation of the same samples, reader pairs/s with 0 and 2
    DataLoader workers (256px-shaped fp16 latents), bytes per pair.

    Args:
        cache_config: cache config whose samples are generated for the overhead ratio.
        overrides: extra radar-cache options for that run, e.g. ["--plan.num_samples", "512"].
        num_pairs: pairs of the synthetic 32x16x16 cache the reader is timed on.
        workers: DataLoader worker counts to time.
        repeats: repetitions (the best is kept).
        parts: generation and/or reader.
        json: also write the rows to this JSON file.
    """
    from radar_train.cache.bench import format_rows, run_cache_benchmark

    rows = run_cache_benchmark(cache_config, overrides, num_pairs, workers, repeats, None, parts)
    print(format_rows(rows))
    _write_json(rows, json)
    return 0


def train(args: TrainBenchArgs = TrainBenchArgs(), json: Optional[str] = None) -> int:  # noqa: F821
    """Training: Lightning vs bare PyTorch step throughput, data loading, peak memory.

    Lightning step throughput vs a bare PyTorch loop (target >= 0.95), data loading vs a step,
    peak memory of a training step vs VAR sampling of the same batch (target <= 0.5).

    Args:
        args: preset (random weights unless a VQ-VAE checkpoint is given), batch size, steps, device, precision.
        json: also write the rows to this JSON file.
    """
    from radar_train.train.bench import format_table, run_train_benchmark

    rows = run_train_benchmark(args)
    print(format_table(rows))
    _write_json(rows, json)
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.accel import ConfigError

    try:
        sys.exit(CLI({"accel": accel, "pipeline": pipeline, "cache": cache, "train": train}, args=argv))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
