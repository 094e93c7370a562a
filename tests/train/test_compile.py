"""model.optim.compile: the decoder's blocks through one compiled function (radar_train.train.compile).

The CPU tests trace with the aot_eager backend (dynamo + AOT autograd, the graphs run by ATen: no code
generation, which takes about a minute per model on this CPU); the inductor path runs in tests/test_gpu.py."""
from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from radar_train.train import compile as compile_mod
from radar_train.train.conditioning import LabelConditioningArgs
from radar_train.train.module import RadarLoraModule
from radar_train.train.optim import OptimArgs, build_optimizer

CASES = {
    "plain": {},
    "label-conditioned-with-activation-checkpointing": {
        "label_conditioning": LabelConditioningArgs(kind="film", embed_dim=8),
        "optim_extra": {"activation_checkpointing": True}},
    "norms-checkpointing": {"optim_extra": {"activation_checkpointing": "norms"}},  # checkpoint inside the graphs
}


@pytest.fixture(autouse=True)
def _trace_only(monkeypatch):
    monkeypatch.setattr(compile_mod, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hq = torch.randn(4, 8, 8, 8, generator=g)
    return {"fhat_hq": hq, "fhat_lq": hq + 0.5 * torch.randn(hq.shape, generator=g),
            "label": torch.tensor([0, 3, 5, 3])}


def _module(compiled: bool, label_conditioning=None, optim_extra=None) -> RadarLoraModule:
    torch.manual_seed(0)
    kw = {} if label_conditioning is None else {"label_conditioning": label_conditioning}
    optim = OptimArgs(learning_rate=1e-2, warmup_steps=1, compile=compiled, **(optim_extra or {}))
    return RadarLoraModule(optim=optim, **kw).train()


def _train(module: RadarLoraModule, steps: int = 3) -> list[float]:
    params = [p for p in module.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, module.optim_args, 10)
    losses = []
    for i in range(steps):
        loss = module.compute_loss(_batch(i))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_blocks_train_and_decode_like_eager_without_graph_breaks(case):
    eager, compiled = _module(False, **CASES[case]), _module(True, **CASES[case])
    assert eager.decoder.decoder.block_call is None and compiled.decoder.decoder.block_call is not None
    want, got = _train(eager), _train(compiled)
    assert counters["stats"]["unique_graphs"] > 0, "nothing went through torch.compile"
    assert got == pytest.approx(want, rel=1e-5) and want[-1] != want[0]
    a, b = eager.state_dict(), compiled.state_dict()
    assert list(a) == list(b), "compilation must not rename the state dict's keys"
    trained = [k for k in a if ".lora_B." in k]
    assert trained and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in trained)
    # validation decodes the same latents with the adapters off (teacher) and on (student), both without grad:
    # the compiled function must keep them apart (the adapter switch is part of its guards)
    batch = _batch(7)
    with torch.no_grad():
        for adapters in (False, True):
            want_img = eager.decode(batch["fhat_lq"], adapters=adapters, labels=batch["label"])[0]
            got_img = compiled.decode(batch["fhat_lq"], adapters=adapters, labels=batch["label"])[0]
            assert torch.allclose(got_img, want_img, atol=1e-5), adapters
        student, teacher = (compiled.decode(batch["fhat_lq"], adapters=a, labels=batch["label"])[0]
                            for a in (True, False))
    assert (student - teacher).abs().max() > 1e-3, "the trained adapters must change the image"
    assert not counters["graph_break"], dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    _train(compiled, steps=1)  # new batch and label tensors: the graphs of the first steps serve them
    assert counters["stats"]["unique_graphs"] == graphs, "a training step after the first ones recompiled"


def test_a_label_conditioned_module_after_a_plain_one_in_the_same_process_applies_its_film():
    """Every decoder runs the same compiled function; dynamo did not guard on the blocks' forward hooks, so a
    label-conditioned decoder (its FiLM is a GroupNorm hook) reused the graphs traced on a plain decoder
    before it: decoded without the FiLM, and the FiLM got no gradient (a notebook, a sweep in one process)."""
    plain = _module(True)
    plain.compute_loss(_batch(0))[0].backward()  # the plain module's graphs, traced first
    film = LabelConditioningArgs(kind="film", embed_dim=8)
    torch.manual_seed(1)
    compiled, eager = _module(True, label_conditioning=film), _module(False, label_conditioning=film)
    with torch.no_grad():
        for p in compiled.label_cond.parameters():
            p.normal_(0, 0.5)  # a FiLM that moves the output (a fresh one starts at the identity)
        eager.load_state_dict(compiled.state_dict())
    batch = _batch(1)
    out_c, out_e = (m.decode(batch["fhat_lq"], labels=batch["label"])[0] for m in (compiled, eager))
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
    compiled.compute_loss(batch)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in compiled.label_cond.parameters())


def test_a_deep_copy_runs_its_own_weights_through_the_compiled_function():
    """model.ema deep-copies the module for its average: the copy must decode with the copy's weights."""
    module = _module(True)
    _train(module, steps=1)
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if ".lora_B." in name:
                p.mul_(3.0)
        lq = _batch(1)["fhat_lq"]
        mine, theirs = module.decode(lq)[0], twin.decode(lq)[0]
        reference = copy.deepcopy(twin)
        reference.decoder.decoder.block_call = None  # the same weights, run eagerly
        assert torch.allclose(theirs, reference.decode(lq)[0], atol=1e-5)
    assert (mine - theirs).abs().max() > 1e-3


def test_compile_refuses_a_module_that_is_no_decoder():
    with pytest.raises(TypeError, match="not a VQ-VAE decoder"):
        compile_mod.compile_decoder_blocks(torch.nn.Linear(2, 2))


def test_the_training_benchmark_times_the_compiled_step():
    from radar_train.train.bench import TrainBenchArgs, compiled_vs_eager_row, format_table

    row = compiled_vs_eager_row(TrainBenchArgs(batch_size=2, steps=3, warmup=1, memory=False, device="cpu"))
    assert row["name"] == "compiled_vs_eager" and row["backend"] == "aot_eager" and row["warmup_s"] > 0
    assert row["steps"] == 3 and row["eager_samples_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["compiled_samples_per_s"] / row["eager_samples_per_s"])
    assert counters["stats"]["unique_graphs"] > 0, "the compiled loop must compile"
    line = format_table([row]).splitlines()[-1]
    assert line.startswith("compiled_vs_eager") and "compiled (aot_eager)" in line and "3 interleaved steps" in line


@pytest.mark.gpu
def test_compiled_decoder_blocks_train_like_eager_on_cuda(monkeypatch):
    """model.optim.compile with inductor (Triton kernels): three fp32 training steps give eager's losses to
    rounding (cuDNN convolutions run in TF32 by default, and inductor may lay them out channels-last, so
    the kernels differ slightly), with no graph break. Not in benchmarks/run_gpu_suite.sh (the compilation
    takes a minute)."""
    monkeypatch.setattr(compile_mod, "COMPILE_BACKEND", "inductor")
    g = torch.Generator().manual_seed(0)
    hq = torch.randn(4, 8, 8, 8, generator=g).cuda()
    batch = {"fhat_hq": hq, "fhat_lq": hq + 0.5 * torch.randn(hq.shape, generator=g).cuda()}
    losses = []
    counters.clear()
    for compiled in (False, True):
        torch.manual_seed(0)
        module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, compile=compiled)).cuda().train()
        params = [p for p in module.parameters() if p.requires_grad]
        opt, sched = build_optimizer(params, module.optim_args, 10)
        run = []
        for _ in range(3):
            loss = module.compute_loss(batch)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run.append(loss.item())
        losses.append(run)
    print(f"compiled decoder training on CUDA: eager losses {losses[0]}, compiled {losses[1]}")
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]


def test_a_lightning_fit_with_compile_writes_checkpoints_and_warns_on_the_cpu(tmp_path, caplog):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from radar_train.train.module import OutputArgs

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            b = _batch(i)
            return {"fhat_hq": b["fhat_hq"][0], "fhat_lq": b["fhat_lq"][0]}

    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=1e-2, warmup_steps=1, compile=True),
                             output=OutputArgs(save_every_n_steps=2))
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_steps=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    with caplog.at_level("WARNING"):
        trainer.fit(module, DataLoader(Pairs(), batch_size=4))
    assert any("model.optim.compile on the CPU" in r.getMessage() for r in caplog.records)
    assert counters["stats"]["unique_graphs"] > 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    assert (tmp_path / "final").is_dir()
