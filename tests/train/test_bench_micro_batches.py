"""radar-bench train in micro-batches (--args.micro_batch_size, --args.micro_batch_sizes): a step of the batch as
several forward/backward passes whose gradients add up before the one update, as Lightning's
accumulate_grad_batches trains, and the checkpointing rows over micro-batch sizes and modes."""
from __future__ import annotations

import pytest
import torch

from radar_train.train import bench
from radar_train.train.bench import TrainBenchArgs

CPU = torch.device("cpu")


def _lora(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_a_step_in_micro_batches_makes_the_update_of_the_whole_batch(monkeypatch):
    """Four micro-batches of one pair: four forward/backward passes, one update, the same gradients and LoRA
    weights as one pass over the four pairs (float64: equal up to the order of the sums)."""
    whole = bench._train_setup(TrainBenchArgs(preset="tiny", batch_size=4), CPU, 2, precision="64-true")
    split = bench._train_setup(TrainBenchArgs(preset="tiny", batch_size=4, micro_batch_size=1), CPU, 2,
                               precision="64-true")
    assert [len(s[1]) for s in (whole, split)] == [1, 4]
    for state in (whole, split):  # no clipping: it would rescale a wrongly scaled sum of the gradients
        state[0].optim_args.grad_clip_norm = float("inf")
    assert all(torch.equal(torch.cat([m[k] for m in split[1]]), whole[1][0][k]) for k in whole[1][0])
    before = _lora(split[0])
    for state in (whole, split):
        bench._train_step(state, CPU, "64-true")  # (LoRA B starts at zero: the first step moves B only)
    calls = []
    real = type(split[0]).compute_loss
    monkeypatch.setattr(type(split[0]), "compute_loss",
                        lambda self, b: (calls.append(len(b["fhat_lq"])), real(self, b))[1])
    for state in (whole, split):
        bench._train_step(state, CPU, "64-true")
    assert calls == [4, 1, 1, 1, 1]
    grads = [{n: p.grad for n, p in state[0].named_parameters() if p.requires_grad} for state in (whole, split)]
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-15) for n in grads[0])
    a, b = _lora(whole[0]), _lora(split[0])
    assert all(not torch.equal(b[n], before[n]) for n in b if ".lora_A." in n or ".lora_B." in n)
    assert all(torch.allclose(a[n], b[n], rtol=1e-9, atol=1e-12) for n in a)


def test_the_lightning_loop_accumulates_the_micro_batches_of_each_step(monkeypatch):
    """batch 4 in micro-batches of 2, 1 + 2 steps: Trainer.fit runs 6 micro-batches of 2 and 3 updates."""
    import lightning.pytorch as pl

    from radar_train.train.module import RadarLoraModule

    seen, trainers = [], []
    real = RadarLoraModule.compute_loss
    monkeypatch.setattr(RadarLoraModule, "compute_loss",
                        lambda self, b: (seen.append(len(b["fhat_lq"])), real(self, b))[1])
    real_trainer = pl.Trainer
    monkeypatch.setattr(pl, "Trainer", lambda *a, **kw: trainers.append(real_trainer(*a, **kw)) or trainers[-1])
    s = bench.lightning_loop(TrainBenchArgs(preset="tiny", batch_size=4, micro_batch_size=2, steps=2, warmup=1), CPU,
                             "32-true")
    assert s > 0 and seen == [2] * 6
    assert trainers[0].accumulate_grad_batches == 2 and trainers[0].global_step == 3


@pytest.mark.parametrize("args,message", [
    ({"micro_batch_size": 3}, "--args.micro_batch_size must divide --args.batch_size (16), got 3"),
    ({"micro_batch_size": 0}, "--args.micro_batch_size must divide --args.batch_size (16), got 0"),
    ({"micro_batch_sizes": [16, 5]}, "--args.micro_batch_sizes must divide --args.batch_size (16), got 5"),
    ({"micro_batch_sizes": [2, 2]}, "--args.micro_batch_sizes must name each size once (at least one), got [2, 2]"),
    ({"micro_batch_sizes": []}, "--args.micro_batch_sizes must name each size once (at least one), got []"),
])
def test_micro_batch_sizes_that_do_not_divide_the_batch_are_refused(args, message):
    with pytest.raises(ValueError) as e:
        bench.check_args(TrainBenchArgs(preset="tiny", **args))
    assert str(e.value) == message


def test_checkpointing_rows_run_every_mode_at_every_micro_batch_size(monkeypatch):
    """micro_batch_sizes [2, 1] with batch 2: six variants, in order, each measured (stand-in peaks) but the
    memory row's own (micro-batches of 1, false), each against the first and against VAR sampling."""
    asked = []

    def peaks(kinds, dev, precision):
        asked.extend((bench.micro_batch(a), a.activation_checkpointing) for _, a in kinds)
        return [100 * (i + 1) * 2**20 for i in range(len(kinds))], "stand-in"

    monkeypatch.setattr(bench, "_peaks", peaks)
    timed = []
    monkeypatch.setattr(bench, "_interleaved_steps", lambda states, *a: (
        timed.extend(len(s[1]) for s in states), [0.5 + i for i in range(len(states))])[1])
    args = TrainBenchArgs(preset="tiny", batch_size=2, steps=1, warmup=0, micro_batch_size=1, micro_batch_sizes=[2, 1])
    rows = bench.checkpointing_rows(args, CPU, "32-true", measured=(50 * 2**20, "stand-in"), sampling=1000 * 2**20)
    variants = [(2, False), (2, "norms"), (2, "blocks"), (1, False), (1, "norms"), (1, "blocks")]
    assert asked == [v for v in variants if v != (1, False)]
    assert timed == [1, 1, 1, 2, 2, 2]  # micro-batches per step of each variant's state
    assert [(r["micro_batch_size"], r["activation_checkpointing"]) for r in rows] == variants
    assert [r["train_step_mib"] for r in rows] == [100, 200, 300, 50, 400, 500]
    assert [r["ratio"] for r in rows] == [1.0, 2.0, 3.0, 0.5, 4.0, 5.0]
    assert [r["vs_sampling"] for r in rows] == [0.1, 0.2, 0.3, 0.05, 0.4, 0.5]
    assert [r["time_ratio"] for r in rows] == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    detail = bench.row_detail(rows[4])
    assert detail == ("micro-batches of 1, activation_checkpointing norms: train step 400 MiB, 0.400x VAR sampling of "
                      "the batch, 4500 ms (9.000x the time of the first variant; one timed step each)")
    assert bench.row_detail(rows[0]).startswith("whole batch, activation_checkpointing false: train step 100 MiB")


def test_the_memory_row_and_the_table_say_when_the_step_ran_in_micro_batches():
    row = {"name": "memory_train_vs_sampling", "preset": "tiny", "batch_size": 16, "device": "cpu",
           "precision": "32-true", "micro_batch_size": 4, "activation_checkpointing": False, "train_step_mib": 10.0,
           "var_sampling_mib": 40.0, "ratio": 0.25, "target": "<= 0.5", "method": "stand-in"}
    assert bench.row_detail(row) == "train step 10 MiB in micro-batches of 4 vs VAR sampling 40 MiB (stand-in)"
    head = bench.format_table([row]).splitlines()[0]
    assert head == "# train benchmark: tiny, batch 16, cpu, 32-true, in micro-batches of 4"
    old = {**row, "micro_batch_size": None}  # a row from before micro-batches
    del old["micro_batch_size"]
    assert bench.row_detail(old) == "train step 10 MiB vs VAR sampling 40 MiB (stand-in)"


def test_slow_rates_keep_three_significant_digits():
    """A VAR-d16 step on a CPU runs at about 0.1 samples/s: one decimal would print both loops as 0.1."""
    row = {"name": "lightning_vs_bare", "bare_samples_per_s": 0.09851, "lightning_samples_per_s": 120.04}
    assert bench.row_detail(row) == "bare 0.0985 samples/s, Lightning 120.0 samples/s"
