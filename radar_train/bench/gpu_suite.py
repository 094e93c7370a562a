"""Everything that only a GPU can show, in one run: `python -m radar_train.bench.gpu_suite OUT_DIR [sections]`.

Sections: accel (VAR-d16/d24/d30 batch 32 bf16, d36 batch 16), pipeline (adapter decode overhead and
images/s per method, d16 batch 32), train (decoder LoRA step throughput and peak memory, d16 batch 16
bf16), cache (radar-cache wall time vs bare pair generation, random-weight d16; needs zarr). Each section writes OUT_DIR/<section>.json; a failing section is reported and skipped.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def _accel(out: Path) -> None:
    import torch

    from radar_train.bench.accel import BenchSetup, format_table, run_accel_benchmark

    rows = []
    plan = [("var-d16", 32), ("var-d24", 32), ("var-d30", 32), ("var-d36", 16)]
    for preset, batch in plan:
        r = run_accel_benchmark(BenchSetup(preset=preset, batch_size=batch, device="cuda", warmup=2, repeats=5))
        print(format_table(r), flush=True)
        rows += r
        torch.cuda.empty_cache()
    (out / "accel.json").write_text(json.dumps(rows, indent=2))


def _train(out: Path) -> None:
    from radar_train.train.bench import TrainBenchArgs, format_table, run_train_benchmark

    rows = run_train_benchmark(TrainBenchArgs(preset="var-d16", batch_size=16, device="cuda"))
    print(format_table(rows), flush=True)
    (out / "train.json").write_text(json.dumps(rows, indent=2))


def _cache(out: Path) -> None:
    from radar_train.cache.bench import format_rows, run_cache_benchmark

    overrides = ["--model.vae_checkpoint", "null", "--model.var_checkpoint", "null", "--model.init_seed", "0",
                 "--plan.images_per_class", "null", "--plan.num_samples", "3072", "--plan.shard_size", "1024"]
    rows = run_cache_benchmark("configs/cache/d16_fastvar.yaml", overrides, parts=("generation",))
    print(format_rows(rows), flush=True)
    (out / "cache.json").write_text(json.dumps(rows, indent=2))


def _pipeline(out: Path) -> None:
    from radar_train.bench.accel import BenchSetup
    from radar_train.bench.pipeline import format_table, run_pipeline_benchmark

    rows = run_pipeline_benchmark(BenchSetup(preset="var-d16", batch_size=32, device="cuda", warmup=2, repeats=5))
    print(format_table(rows), flush=True)
    (out / "pipeline.json").write_text(json.dumps(rows, indent=2))


SECTIONS = {"accel": _accel, "pipeline": _pipeline, "train": _train, "cache": _cache}


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    status = {}
    for name in argv[1:] or list(SECTIONS):
        t0 = time.time()
        try:
            SECTIONS[name](out)
            status[name] = f"ok ({time.time() - t0:.0f} s)"
        except Exception:  # noqa: BLE001 - report and go on with the next section
            status[name] = "failed: " + traceback.format_exc(limit=3).strip().splitlines()[-1]
            traceback.print_exc()
        print(f"== {name}: {status[name]}", flush=True)
    (out / "status.json").write_text(json.dumps(status, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
