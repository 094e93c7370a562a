"""Everything that only a GPU can show, in one run: `python -m radar_train.bench.gpu_suite OUT_DIR [sections]`.

Sections: accel (VAR-d16/d24/d30 batch 32 bf16, d36 batch 16), train (decoder LoRA step throughput and
peak memory, when radar_train.train.bench exists), cache (when radar_train.cache.bench and zarr are
importable). Each section writes OUT_DIR/<section>.json; a failing section is reported and skipped.
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
    from radar_train.train import bench  # noqa: F401  (provided by the train stage)

    rows = bench.run_train_benchmark(gpu=True)
    (out / "train.json").write_text(json.dumps(rows, indent=2))


def _cache(out: Path) -> None:
    from radar_train.cache import bench

    rows = bench.run_cache_benchmark(gpu=True)
    (out / "cache.json").write_text(json.dumps(rows, indent=2))


SECTIONS = {"accel": _accel, "train": _train, "cache": _cache}


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
