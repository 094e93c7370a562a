"""Cold compile time of the two ways `sampling.engine compiled` compiles, on the machine it runs on (the CPU here):

    python benchmarks/compile_time.py [--preset var-d16] [--batch_size 2] [--whole_scales 2] [--json FILE]

- pieces (the compiled engine on CUDA, `radar_train.engine.compiled_block_ops`): one sampling call each of vanilla,
  fastvar:default and stagevar:default with the blocks' pieces compiled, every scale; the first call against a
  second, warm one (its difference is the compiling);
- whole run (the compiled engine on the CPU, `radar_train.engine.compile_run`): the first `--whole_scales` scales
  of one vanilla call as one graph, its first run against the same scales run eagerly (a whole call compiles
  every scale into its graph).

Inductor's on-disk caches are off (a cold compile, as on a fresh machine). Random weights, float32, 2 torch threads
unless OMP_NUM_THREADS says otherwise. Prints one line per measurement; --json writes them with the device, torch
version and date.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch._inductor.config.force_disable_caches = True

from radar_train.bench.accel import build_random_models, method_from_spec  # noqa: E402
from radar_train.bench.record import environment  # noqa: E402
from radar_train.config import SamplingConfig  # noqa: E402
from radar_train.engine import compile_run, compiled_block_ops  # noqa: E402
from radar_train.sampling import NextScaleSampler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="var-d16")
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--whole_scales", type=int, default=2, help="scales of the run compiled whole")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    var, quant, _ = build_random_models(a.preset, torch.device("cpu"), 0)
    s = NextScaleSampler(var, quant, SamplingConfig(cfg=1.5, top_k=900, top_p=0.96, engine="eager"))
    labels, seeds = torch.arange(a.batch_size) % var.num_classes, list(range(a.batch_size))
    rows = []

    def call(ops, spec):
        accel = None if spec == "vanilla" else method_from_spec(spec, var.patch_nums, var.depth)
        state = s.start(labels, seeds=seeds, accel=accel)
        t = time.perf_counter()
        s._run(state, len(var.patch_nums), ops)
        return time.perf_counter() - t

    with torch.inference_mode():
        ops = compiled_block_ops()
        for spec in ("vanilla", "fastvar:default", "stagevar:default"):
            first, warm = call(ops, spec), call(ops, spec)
            rows.append({"way": "pieces", "method": spec, "first_call_s": first, "warm_call_s": warm})
            print(f"pieces, {spec}: first call {first:.1f} s, warm call {warm:.1f} s", flush=True)
        run = compile_run(s)
        state, ref = s.start(labels, seeds=seeds), s.start(labels, seeds=seeds)
        t = time.perf_counter()
        run(state, a.whole_scales)
        first = time.perf_counter() - t
        t = time.perf_counter()
        s._run(ref, a.whole_scales)
        eager = time.perf_counter() - t
        rows.append({"way": "whole run", "method": "vanilla", "scales": a.whole_scales, "first_run_s": first,
                     "eager_s": eager})
        print(f"whole run, vanilla, scales 0-{a.whole_scales - 1}: first run {first:.1f} s, eager {eager:.2f} s",
              flush=True)
    if a.json:
        doc = {**environment(torch.device("cpu"), command="python " + " ".join(sys.argv)), "preset": a.preset,
               "batch_size": a.batch_size, "rows": rows}
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
