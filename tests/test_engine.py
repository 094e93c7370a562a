"""Sampling engines on the CPU: engine selection and refusals, the preallocated KV cache, the per-scale step
free of host synchronisation and host data for every method and scale, the step traced whole by
torch.compile (fullgraph) with the same tokens as eager, inductor against eager, a cache resume with another
engine, and the graphs engine's bookkeeping (workspaces, replays with new inputs, forks, leases, fallback)
with CPU stand-ins for the CUDA graphs. Real CUDA graphs are covered by tests/test_gpu.py. Most tests use a
micro model (one block, four scales) so that tracing and compiling stay quick."""
from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import radar_train.engine as engine
from radar_train.accel import build_accel
from radar_train.accel.calibrate import calibrate_sca, write_sca_mask
from radar_train.config import AccelArgs, SamplingConfig, SCAArgs
from radar_train.models.hooks import KVCache
from radar_train.sampling import ENGINES, NextScaleSampler, engines_for, generate_pairs

SAMPLING = SamplingConfig(cfg=1.5, top_k=16, top_p=0.9)
LABELS, SEEDS = torch.tensor([0, 3, 2]), [11, 12, 13]


@pytest.fixture(scope="module")
def micro():
    """(quantizer, var): the smallest model with every kind of scale (4 scales, one block, random weights), so
    that tracing and compiling stay quick."""
    from radar_train.models import build_var
    from radar_train.models.configs import VARConfig
    from radar_train.models.init import init_random_
    from radar_train.models.quantizer import MultiScaleQuantizer

    cfg = VARConfig(num_classes=4, depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3, 4), vocab_size=64,
                    z_channels=4)
    var = init_random_(build_var(cfg), 0).eval().requires_grad_(False)
    quant = init_random_(MultiScaleQuantizer(64, 4, cfg.patch_nums), 1).eval().requires_grad_(False)
    return quant, var


@pytest.fixture(scope="module")
def sca_mask(micro, tmp_path_factory):
    """An SCA mask file with scores for the micro model (scales 3 and 4, tile 4): the memory budget evicts a
    KV tile, so the in-place compaction runs."""
    quant, var = micro
    s = NextScaleSampler(var, quant, SAMPLING)
    scores, rows = calibrate_sca(s, (3, 4), 4, 1.0, num_samples=2, batch_size=2, num_classes=var.num_classes)
    path = tmp_path_factory.mktemp("sca") / "micro_sca.safetensors"
    model = {"preset": "micro", "var": {"kind": "random", "value": "micro"}, "depth": var.depth,
             "num_heads": 2, "embed_dim": 32}
    write_sca_mask(path, SCAArgs(), var.patch_nums, scores, tile=4, tau=1.0, rows=rows, num_samples=2, seed=0,
                   batch_size=2, model=model, sampling=asdict(SAMPLING))
    return path


def _methods(var, sca_mask) -> dict:
    from radar_train.accel import FastVAR, StageVAR

    sca = dict(scales=[3, 4], compute_budget=0.5)
    methods = {
        "vanilla": None,
        "fastvar": FastVAR(prune=((4, 0.5),)),  # cache scale 3
        "fastvar-two": FastVAR(prune=((3, 0.4), (4, 0.75)), cache_scale=2),
        "stagevar": StageVAR(scales=((4, 0.96),), min_rank=4),  # observes scale 3, one CFG half at 4
        "stagevar-skip": StageVAR(scales=((3, 0.96), (4, 0.0)), min_rank=4),  # projected 3, skips 4
        "sca-window": AccelArgs("sca", sca=SCAArgs(selection="window", preset=None, memory_budget=1.0, **sca)),
        "sca-scores": AccelArgs("sca", sca=SCAArgs(mask_file=str(sca_mask), preset=None, memory_budget=0.5,
                                                   per_head=True, **sca)),
    }
    return {k: build_accel(m, var.patch_nums, var.depth) if isinstance(m, AccelArgs) else m
            for k, m in methods.items()}


# ---------------------------------------------------------------------------- choosing an engine
def test_engine_names_auto_and_refusals(micro):
    quant, var = micro
    assert ENGINES == ("eager", "graphs", "compiled") and SamplingConfig().engine == "auto"
    assert engines_for("cpu") == ("eager",) and engines_for("cuda") == ("eager", "graphs", "compiled")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.resolve_engine("auto", cpu, "per_sample") == "eager"
    assert engine.resolve_engine("auto", cuda, "per_sample") == engine.AUTO_ON_CUDA == "graphs"
    assert engine.resolve_engine("auto", cuda, "official") == "eager"  # the generator path runs eagerly
    assert engine.resolve_engine("compiled", cpu, "per_sample") == "compiled"
    assert NextScaleSampler(var, quant, SAMPLING).engine == "eager"
    assert NextScaleSampler(var, quant, SAMPLING, engine="compiled").engine == "compiled"
    assert NextScaleSampler(var, quant, replace(SAMPLING, engine="compiled")).engine == "compiled"
    with pytest.raises(ValueError, match=r"^sampling.engine graphs needs a CUDA device \(the model is on cpu\)"):
        NextScaleSampler(var, quant, SAMPLING, engine="graphs")
    with pytest.raises(ValueError, match="sampling.engine compiled needs noise='per_sample'"):
        NextScaleSampler(var, quant, replace(SAMPLING, noise="official"), engine="compiled")
    with pytest.raises(ValueError, match="sampling.engine must be auto, eager, graphs or compiled, got 'fast'"):
        NextScaleSampler(var, quant, replace(SAMPLING, engine="fast"))


def test_an_explicit_captured_engine_refuses_a_method_it_cannot_capture(micro):
    from radar_train.accel.calibrate import RankProbe

    quant, var = micro
    probe = RankProbe([3], 0.96)  # observes on the host: not capturable
    with pytest.raises(ValueError, match="sampling.engine compiled cannot capture .* use engine eager or auto"):
        NextScaleSampler(var, quant, SAMPLING, engine="compiled").sample(LABELS, seeds=SEEDS, accel=probe)


# ---------------------------------------------------------------------------- the KV cache
def test_kv_cache_is_written_in_place_at_static_offsets():
    kv = KVCache(2, capacity=10)
    g = torch.Generator().manual_seed(0)
    k1, v1, k2, v2 = (torch.randn(4, 2, n, 3, generator=g) for n in (1, 1, 4, 4))
    kk, vv = kv.extend(0, k1, v1)
    buf = kv.k[0]
    assert buf.shape == (4, 2, 10, 3) and kk.shape == (4, 2, 1, 3)
    kk, vv = kv.extend(0, k2, v2)
    assert kv.k[0] is buf and kk.data_ptr() == buf.data_ptr() and kv.num_tokens(0) == 5 and kv.num_tokens(1) == 0
    assert torch.equal(kk, torch.cat((k1, k2), 2)) and torch.equal(vv, torch.cat((v1, v2), 2))
    assert kv.nbytes() == 2 * 4 * 2 * 5 * 3 * 4 and kv.allocated_bytes() == 2 * 4 * 2 * 10 * 3 * 4
    other = kv.fork()  # a copy: extending one leaves the other as it was
    other.extend(0, k1, v1)
    assert kv.num_tokens(0) == 5 and other.num_tokens(0) == 6 and other.k[0].data_ptr() != buf.data_ptr()
    assert torch.equal(other.k[0][:, :, :5], kk)
    kk, vv = kv.keep(0, torch.tensor([0, 2, 4]))  # eviction: compacted to the front, in place
    assert kv.num_tokens(0) == 3 and kk.data_ptr() == buf.data_ptr()
    assert torch.equal(kk, torch.cat((k1, k2), 2)[:, :, [0, 2, 4]])
    kv.select_rows(slice(2, 4))  # one CFG half: a view of the same buffers
    assert kv.k[0].shape[0] == 2 and kv.k[0].data_ptr() == buf[2:].data_ptr()
    with pytest.raises(ValueError, match="holds 3 of 10 tokens; cannot append 8"):
        kv.extend(0, *(torch.zeros(2, 2, 8, 3) for _ in range(2)))


def test_kv_cache_capacity_per_block_and_overflow_refused(micro):
    """Per-block capacities size the buffers; an append or a copy past a block's capacity is refused with one
    line naming the block and the sizes, and nothing is written."""
    kv = KVCache(3, capacity=(4, 6, 2))
    assert kv.capacity == (4, 6, 2) and kv.shallow_copy().capacity == (4, 6, 2)
    k = torch.arange(30.0).view(2, 1, 3, 5)
    kv.extend(0, k, k)
    kv.extend(1, k, k)
    assert [t.shape[2] for t in kv.k[:2]] == [4, 6] and kv.k[2] is None
    assert kv.allocated_bytes() == 2 * (2 * 1 * (4 + 6) * 5) * 4 and kv.nbytes() == 2 * (2 * 1 * 6 * 5) * 4
    with pytest.raises(ValueError, match=r"^KV cache of block 0 holds 3 of 4 tokens; cannot append 3$"):
        kv.extend(0, k, k)
    with pytest.raises(ValueError, match=r"^KV cache of block 2 holds 0 of 2 tokens; cannot append 3$"):
        kv.extend(2, k, k)
    assert kv.num_tokens(0) == 3 and kv.k[2] is None
    kv.extend(1, k, k)  # 6 of 6
    with pytest.raises(ValueError, match=r"^KV cache of block 1 holds 6 tokens; a copy of capacity 5 cannot take them$"):
        kv.fork(capacity=(4, 5, 2))
    big = kv.fork(capacity=8)  # a copy may be larger (the vanilla branch of a pair forked from a method's run)
    assert big.capacity == (8, 8, 8) and big.k[1].shape[2] == 8 and torch.equal(big.k[1][:, :, :6], kv.k[1])
    big.extend(1, k[:, :, :2], k[:, :, :2])
    assert big.num_tokens(1) == 8 and kv.num_tokens(1) == 6
    with pytest.raises(ValueError, match=r"one per block \(3 blocks\), got \(4, 6\)"):
        KVCache(3, capacity=(4, 6))
    bufs = [(torch.empty(2, 1, c, 5), torch.empty(2, 1, c, 5)) for c in (4, 6, 1)]
    with pytest.raises(ValueError, match=r"^KV buffers of block 2 hold 1 tokens, below the block's capacity 2$"):
        KVCache(3, (4, 6, 2), buffers=bufs)
    assert KVCache(3, None, buffers=bufs).capacity == (4, 6, 1)
    quant, var = micro  # the model's buffers and caches: the whole sequence unless a capacity is given
    L = var.config.num_tokens
    assert var.new_kv_cache().capacity == (L,) and var.new_kv_cache(capacity=(7,)).capacity == (7,)
    assert var.kv_buffers(2, torch.float32)[0][0].shape == (2, 2, L, 16)
    assert var.kv_buffers(2, torch.float32, (7,))[0][1].shape == (2, 2, 7, 16)


def test_kv_cache_holds_the_compute_dtype(micro):
    quant, var = micro
    s = NextScaleSampler(var, quant, SAMPLING, autocast_dtype=torch.bfloat16)
    state = s.advance(s.start(LABELS, seeds=SEEDS), until=2)
    assert state.kv.k[0].dtype == torch.bfloat16 and state.kv.k[0].shape[2] == var.config.num_tokens
    assert state.kv.num_tokens(0) == 1 + 4


# ---------------------------------------------------------------------------- no host synchronisation
HOST_CALLS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "tensor", "as_tensor",
              "from_numpy", "pin_memory", "nonzero", "masked_select", "unique", "synchronize"}
HOST_OPS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.nonzero", "aten.masked_select", "aten._unique")


class _HostSpy(TorchFunctionMode):
    """Records every call that reads a device value on the host or brings host data to the device."""

    def __init__(self, found):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in HOST_CALLS or (name == "to" and (any(isinstance(a, (str, torch.device)) for a in args[1:])
                                                    or "device" in kwargs)):
            self.found.append(name)
        return func(*args, **kwargs)


class _OpSpy(TorchDispatchMode):
    def __init__(self, found):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(HOST_OPS):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def _spied(fn, found):
    def run(*a, **kw):
        with _HostSpy(found), _OpSpy(found):
            return fn(*a, **kw)
    return run


def test_the_device_side_of_a_run_never_touches_the_host(micro, sca_mask):
    """Every scale of every method (restored sub-layers, projected blocks, a skip, sparse attention with KV
    eviction), the start and the forks of pairs: no value read back to the host, no host data sent to the
    device, no data-dependent shapes (on CUDA each would synchronise the loop)."""
    quant, var = micro
    s = NextScaleSampler(var, quant, SAMPLING)
    found: list = []
    s._begin, s._plan, s._compute, s._fork_state = (_spied(f, found) for f in (s._begin, s._plan, s._compute,
                                                                                 s._fork_state))
    methods = _methods(var, sca_mask)
    for name, method in methods.items():
        out = s.sample(LABELS, seeds=SEEDS, accel=method)
        assert len(out.indices) == len(var.patch_nums)
        if method is not None:  # a fork (and after it a CFG-half switch for stagevar)
            generate_pairs(s, LABELS, method, seeds=SEEDS)
        assert found == [], (name, sorted(set(found)))
    # the spy sees what it should: the old per-scale key derivation sent host data every scale
    probe: list = []
    _spied(lambda: torch.tensor([1, 2]).sum().item(), probe)()
    assert "tensor" in probe and "item" in probe and "aten._local_scalar_dense.default" in probe


# ---------------------------------------------------------------------------- compiled
class _Graphs:
    """A torch.compile backend that runs the traced graph as it is and remembers it."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _called(gm) -> set:
    """The names of the functions a traced graph calls."""
    return {str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes if n.op == "call_function"}


def _host_data_ops(gm) -> set:
    return _called(gm) & {"tensor", "as_tensor", "from_numpy", "item", "tolist"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla", "fastvar", "fastvar-two", "stagevar", "stagevar-skip", "sca-window",
                                  "sca-scores", "vanilla+matmul", "stagevar+matmul"])
def test_the_cpu_compiled_engine_traces_each_run_whole_and_gives_the_eager_tokens(micro, sca_mask, monkeypatch,
                                                                                 name):
    """The CPU compiled engine: torch.compile(fullgraph=True) of the whole run (every scale planned and computed):
    one graph for all its scales (a graph break would raise), no host data in it, and the traced graph runs to the
    eager tokens and f_hat bit for bit. `+matmul`: the resizes as matrix products, as on CUDA (radar_train.interp:
    the sampler's bicubic upsampling, the restore; the matrices are made inside the traced graph)."""
    import radar_train.accel.stagevar as stagevar_module
    import radar_train.interp as interp

    quant, var = micro
    backend = _Graphs()
    monkeypatch.setattr(engine, "COMPILE_BACKEND", backend)
    matmul = name.endswith("+matmul")
    if matmul:
        name = name[: -len("+matmul")]
        products = lambda device: frozenset({torch.float32})  # noqa: E731
        monkeypatch.setattr(interp, "matmul_resize_dtypes", products)
        monkeypatch.setattr(stagevar_module, "matmul_resize_dtypes", products)
    method = _methods(var, sca_mask)[name]
    ref = NextScaleSampler(var, quant, SAMPLING).sample(LABELS, seeds=SEEDS, accel=method)
    comp = NextScaleSampler(var, quant, SAMPLING, engine="compiled")
    assert isinstance(comp._engine, engine.CompiledEngine)
    out = comp.sample(LABELS, seeds=SEEDS, accel=method)
    assert len(backend.graphs) == 1  # the whole run, one graph
    assert not _host_data_ops(backend.graphs[0])
    if matmul:
        assert "mm" in _called(backend.graphs[0])
    skips_last = name == "stagevar-skip"  # (its config skips the last scale)
    assert out.skipped_from == ref.skipped_from == (len(var.patch_nums) - 1 if skips_last else None)
    assert _same(out, ref)
    labels, seeds = LABELS.flip(0), [21, 22, 23]  # the next call, other labels and seeds: the same graph
    out, ref = (s.sample(labels, seeds=seeds, accel=method) for s in (comp, NextScaleSampler(var, quant, SAMPLING)))
    assert len(backend.graphs) == 1 and _same(out, ref)


@pytest.mark.slow
def test_the_cpu_compiled_engine_traces_a_pair_as_three_runs(micro, sca_mask, monkeypatch):
    """A forked pair on the CPU compiled engine: the scales before the fork, the vanilla branch after it and the
    method's, one graph each; HQ and LQ are eager's bit for bit."""
    quant, var = micro
    backend = _Graphs()
    monkeypatch.setattr(engine, "COMPILE_BACKEND", backend)
    method = _methods(var, sca_mask)["fastvar"]
    ref = generate_pairs(NextScaleSampler(var, quant, SAMPLING), LABELS, method, seeds=SEEDS)
    out = generate_pairs(NextScaleSampler(var, quant, SAMPLING, engine="compiled"), LABELS, method, seeds=SEEDS)
    assert len(backend.graphs) == 3 and not any(_host_data_ops(gm) for gm in backend.graphs)
    assert _same(out.hq, ref.hq) and _same(out.lq, ref.lq)


@pytest.mark.slow
def test_compiled_engine_runs_inductor_and_matches_eager(micro):
    """The compiled engine with inductor on the CPU, for one scale of the micro model (scale 1: a cold inductor
    compile of one scale takes ~1-3 min on two busy cores, ~15 s with a warm cache; the other scales are the
    same code): the same tokens as eager; f_hat to float rounding (inductor fuses and reorders: max |diff|
    1.2e-7 measured here, 1.8e-7 on the tiny model's scale 1)."""
    quant, var = micro
    eager = NextScaleSampler(var, quant, SAMPLING)
    comp = NextScaleSampler(var, quant, SAMPLING, engine="compiled")
    state = comp.start(LABELS, seeds=SEEDS)
    comp._plan(state)
    comp._compute(state)  # scale 0 eagerly (not compiled: time)
    ref = eager._fork_state(state, None)
    eager.advance(ref, until=2)
    comp.advance(state, until=2)  # scale 1 through the engine: torch.compile with inductor
    assert isinstance(comp._engine, engine.CompiledEngine) and comp._engine._run is not None
    assert torch.equal(state.indices[1], ref.indices[1])
    torch.testing.assert_close(state.f_hat, ref.f_hat, atol=1e-5, rtol=0)


def _first_tensor_input(gm) -> torch.Tensor:
    return next(n.meta["example_value"] for n in gm.graph.nodes
                if n.op == "placeholder" and isinstance(n.meta.get("example_value"), torch.Tensor))


def _compiled_on_cpu(var, quant, monkeypatch) -> NextScaleSampler:
    """The CUDA compiled engine (graphs + compiled block pieces) with CPU stand-ins for the graphs."""
    monkeypatch.setattr(engine.GraphEngine, "_capture", _capture_on_cpu)
    s = NextScaleSampler(var, quant, SAMPLING)
    s._engine = engine.GraphEngine(s, compiled=True)
    return s


def test_compiled_block_pieces_compile_once_for_every_scale_block_and_method(micro, sca_mask, monkeypatch):
    """The compiled engine on CUDA compiles the blocks' AdaLN inputs and q/k normalisation, not the step: each piece
    once for the first scale's single token and once with rows and tokens as symbols, which then serves every
    other scale, both CFG halves and one (StageVAR), FastVAR's kept tokens, SCA-Mask, another batch size and forked
    pairs, without a recompilation. The traced pieces run to eager's tokens and f_hat bit for bit."""
    quant, var = micro
    torch._dynamo.reset()
    backend = _Graphs()
    monkeypatch.setattr(engine, "COMPILE_BACKEND", backend)
    eager = NextScaleSampler(var, quant, SAMPLING)
    comp = _compiled_on_cpu(var, quant, monkeypatch)
    methods = _methods(var, sca_mask)
    calls = [(LABELS, SEEDS), (torch.tensor([1, 2]), [4, 5])]
    try:
        for name, method in methods.items():
            for labels, seeds in calls:
                assert _same(comp.sample(labels, seeds=seeds, accel=method),
                             eager.sample(labels, seeds=seeds, accel=method)), name
        pair, ref = (generate_pairs(s, LABELS, methods["stagevar"], seeds=SEEDS) for s in (comp, eager))
        assert _same(pair.hq, ref.hq) and _same(pair.lq, ref.lq)
        # each piece's graphs: the first scale's (one token) and one with the token count a symbol
        tokens = sorted(str(_first_tensor_input(gm).shape[1]) for gm in backend.graphs)
        assert len(backend.graphs) == 4 and tokens[:2] == ["1", "1"] and all(t.startswith("s") for t in tokens[2:]), \
            tokens
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_block_pieces_with_inductor_give_the_eager_tokens(micro, sca_mask, monkeypatch):
    """The compiled engine's pieces compiled by inductor (the CPU's C++ kernels here, Triton on CUDA): the same
    tokens as eager for vanilla, FastVAR and StageVAR, f_hat to float rounding (inductor fuses the layer norm with
    the modulation and the norm with the multiply)."""
    quant, var = micro
    torch._dynamo.reset()
    eager = NextScaleSampler(var, quant, SAMPLING)
    comp = _compiled_on_cpu(var, quant, monkeypatch)
    methods = _methods(var, sca_mask)
    try:
        for name in ("vanilla", "fastvar", "stagevar"):
            a = comp.sample(LABELS, seeds=SEEDS, accel=methods[name])
            b = eager.sample(LABELS, seeds=SEEDS, accel=methods[name])
            assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices)), name
            torch.testing.assert_close(a.f_hat, b.f_hat, atol=1e-5, rtol=0)
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------- entry points
def test_a_cache_resumes_with_another_engine_but_not_with_other_sampling(build_cache, tmp_path):
    from radar_train.cache.config import CacheArgs, PlanArgs

    args = CacheArgs(sampling=replace(SAMPLING, engine="eager"),
                     plan=PlanArgs(classes=[0, 1], images_per_class=None, num_samples=2, shard_size=1),
                     output=str(tmp_path / "cache"), progress=False, device="cpu", num_threads=1)
    build_cache(args)
    manifest = (tmp_path / "cache" / "manifest.json").read_text()
    build_cache(replace(args, sampling=replace(args.sampling, engine="compiled")))  # complete shards: no work
    assert (tmp_path / "cache" / "manifest.json").read_text() == manifest
    with pytest.raises(ValueError, match=r"differing fields: sampling.cfg \(cache: 1.5, now: 2.0\)"):
        build_cache(replace(args, sampling=replace(args.sampling, cfg=2.0, engine="compiled")))


# ---------------------------------------------------------------------------- the graphs engine's bookkeeping
def _tensors(obj) -> list:
    """Every tensor a run's Python state holds, in a fixed order (method configuration and tables excluded)."""
    from radar_train.accel.base import AccelRun
    from radar_train.sampling import SamplingState

    out: list = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for k in sorted(x, key=repr):
                walk(x[k])
        elif isinstance(x, (SamplingState, KVCache, AccelRun)):
            for k in sorted(vars(x)):
                if not (isinstance(x, SamplingState) and k in engine.BOOKKEEPING):
                    walk(getattr(x, k))

    walk(obj)
    return out


class _ReplayOnCPU:
    """Stands in for a CUDA graph on the CPU: a replay recomputes the captured piece from the run's Python state
    recorded before it and writes every tensor it makes into the tensor the capture made (the KV buffers and
    f_hat it writes in place directly), as a graph replay writes into the capture's memory. Capture
    restrictions and memory pools are left to tests/test_gpu.py."""

    replays = 0

    def __init__(self, piece, before, made):
        self.piece, self.before, self.made = piece, before, made

    def replay(self):
        from radar_train.sampling import copy_state

        _ReplayOnCPU.replays += 1
        state = copy_state(self.before)
        out = self.piece(state)
        fresh = _tensors(out if out is not None else state)
        assert len(fresh) == len(self.made)
        for mine, new in zip(self.made, fresh):
            if mine is not new:
                mine.copy_(new)


def _capture_on_cpu(self, ws, piece, state, warm):
    before = engine.snapshot(state)  # (without the run's hold on the workspace, as a graph holds nothing)
    result = piece(state)  # executes: the capture and its first replay
    return _ReplayOnCPU(piece, before, _tensors(result if result is not None else state)), result


def _graphs_on_cpu(var, quant, monkeypatch, fallback=False, **kw) -> NextScaleSampler:
    monkeypatch.setattr(engine.GraphEngine, "_capture", _capture_on_cpu)
    s = NextScaleSampler(var, quant, replace(SAMPLING, engine="auto" if fallback else "eager", **kw))
    s._engine = engine.GraphEngine(s, fallback=fallback)
    return s


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.indices, b.indices)) and torch.equal(a.f_hat, b.f_hat)


def test_graphs_engine_replays_each_piece_with_the_new_inputs(micro, sca_mask, monkeypatch):
    """The graphs engine's bookkeeping with CPU stand-ins for the graphs: a later call (other labels and seeds)
    only replays (the start and each scale, once) and gives eager's result bit for bit; the result of the
    first call is a copy (the replay does not change it); a pair's vanilla half runs in a child workspace."""
    quant, var = micro
    eager = NextScaleSampler(var, quant, SAMPLING)
    graphs = _graphs_on_cpu(var, quant, monkeypatch)
    eng = graphs._engine
    methods = _methods(var, sca_mask)
    calls = [(LABELS, SEEDS), (torch.tensor([3, 1, 4]), [5, 99, 6])]
    for name in ("vanilla", "fastvar", "stagevar-skip", "sca-scores"):
        method = methods[name]
        refs = [eager.sample(labels, seeds=seeds, accel=method) for labels, seeds in calls]
        first = graphs.sample(*calls[0][:1], seeds=calls[0][1], accel=method)
        assert _same(first, refs[0]), name
        replays = _ReplayOnCPU.replays
        assert _same(graphs.sample(*calls[1][:1], seeds=calls[1][1], accel=method), refs[1]), name
        (ws,) = eng.workspaces[(6, engine._MethodKey(method))]
        assert _ReplayOnCPU.replays - replays == 1 + sum(p.graph is not None for p in ws.scales.values())
        assert _same(first, refs[0]), name
    method = methods["stagevar-skip"]  # a fork, then the CFG-half switch and the skip in the accelerated half
    for labels, seeds in calls:
        pair, ref = (generate_pairs(s, labels, method, seeds=seeds) for s in (graphs, eager))
        assert _same(pair.hq, ref.hq) and _same(pair.lq, ref.lq) and pair.fork_scale == ref.fork_scale
    # one workspace per method, all free again; the pair's vanilla half in a child with other KV buffers, while
    # workspaces not held at the same time share theirs
    assert len(eng.workspaces) == 4 and all(len(v) == 1 and v[0].usable() for v in eng.workspaces.values())
    parent = eng.workspaces[(6, engine._MethodKey(method))][0]
    (child,) = [c for cs in parent.children.values() for c in cs]
    assert child.kv is not parent.kv and eng.workspaces[(6, engine._MethodKey(None))][0].kv is parent.kv


def test_graphs_engine_kv_buffers_have_the_capacity_of_the_run(micro, sca_mask, monkeypatch):
    """A method that evicts KV tokens (SCA-Mask with a memory budget) runs in a workspace whose static KV
    buffers have its capacity; the vanilla branch of its pair gets whole-sequence buffers (shared with the
    vanilla workspace, not held at the same time). Singles and pairs, captured then replayed: eager's result."""
    quant, var = micro
    eager = NextScaleSampler(var, quant, SAMPLING)
    graphs = _graphs_on_cpu(var, quant, monkeypatch)
    eng = graphs._engine
    method = _methods(var, sca_mask)["sca-scores"]
    cap, L = method.kv_capacity(var.patch_nums, var.depth), var.config.num_tokens
    assert len(cap) == var.depth and max(cap) < L
    for labels, seeds in [(LABELS, SEEDS), (torch.tensor([3, 1, 4]), [5, 99, 6])]:  # capture, then replay
        pair, ref = (generate_pairs(s, labels, method, seeds=seeds) for s in (graphs, eager))
        assert _same(pair.hq, ref.hq) and _same(pair.lq, ref.lq)
        for m in (method, None):
            assert _same(graphs.sample(labels, seeds=seeds, accel=m), eager.sample(labels, seeds=seeds, accel=m))
    (ws,) = eng.workspaces[(6, engine._MethodKey(method))]
    (child,) = [c for cs in ws.children.values() for c in cs]
    (van,) = eng.workspaces[(6, engine._MethodKey(None))]
    assert [k.shape[2] for k, _ in ws.kv.buffers] == list(cap)
    assert [k.shape[2] for k, _ in child.kv.buffers] == [L] * var.depth and van.kv is child.kv


def test_graphs_engine_state_machine_and_concurrent_runs(micro, monkeypatch):
    """advance to any scale, fork there, output: as eager. A run started while another holds the workspace
    gets its own; another batch size gets its own; trace runs eagerly."""
    quant, var = micro
    eager = NextScaleSampler(var, quant, SAMPLING)
    graphs = _graphs_on_cpu(var, quant, monkeypatch)
    eng = graphs._engine
    for round_ in range(2):  # capture, then replay
        a = graphs.start(LABELS, seeds=SEEDS)
        b = graphs.start(LABELS[:2], seeds=SEEDS[:2])  # another batch size
        c = graphs.start(LABELS, seeds=SEEDS)  # a's workspace is held: another one
        assert a.handle.ws is not c.handle.ws and a.handle.ws.kv is not c.handle.ws.kv
        graphs.advance(a, until=3)
        forked = graphs.fork(a)
        ref = eager.advance(eager.start(LABELS, seeds=SEEDS), until=3)
        assert torch.equal(a.f_hat, ref.f_hat) and a.kv.num_tokens(0) == ref.kv.num_tokens(0) == 1 + 4 + 9
        want = eager.sample(LABELS, seeds=SEEDS)
        assert all(_same(graphs.output(graphs.advance(run)), want) for run in (a, forked, c))
        assert _same(graphs.output(graphs.advance(b)), eager.sample(LABELS[:2], seeds=SEEDS[:2]))
        del a, b, c, forked  # the workspaces are free again
    assert sorted(len(v) for v in eng.workspaces.values()) == [1, 2]
    traced = graphs.start(LABELS, seeds=SEEDS, trace=True)
    assert traced.handle is None and traced.eager


def test_a_failed_capture_falls_back_to_eager_under_auto_and_is_an_error_otherwise(micro, monkeypatch):
    quant, var = micro
    ref = NextScaleSampler(var, quant, SAMPLING).sample(LABELS, seeds=SEEDS)
    for failing_piece in (0, 3):  # the start, a scale
        calls = []

        def capture(self, ws, piece, state, warm, calls=calls, n=failing_piece):
            calls.append(1)
            if len(calls) > n:
                raise RuntimeError("operation not permitted when stream is capturing\nmore")
            return _capture_on_cpu(self, ws, piece, state, warm)

        auto = _graphs_on_cpu(var, quant, monkeypatch, fallback=True)
        monkeypatch.setattr(engine.GraphEngine, "_capture", capture)
        with pytest.warns(RuntimeWarning, match=r"^sampling.engine auto: capturing (the start of a run|scale 2) failed "
                                                r"\(RuntimeError: operation not permitted when stream is capturing\); "
                                                r"sampling eagerly from here on$"):
            out = auto.sample(LABELS, seeds=SEEDS)
        assert _same(out, ref) and auto.engine == "eager"
    explicit = _graphs_on_cpu(var, quant, monkeypatch)
    monkeypatch.setattr(engine.GraphEngine, "_capture", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match=r"^sampling.engine graphs: capturing the start of a run failed "
                                           r"\(RuntimeError: boom\); use sampling.engine eager$"):
        explicit.sample(LABELS, seeds=SEEDS)


def test_graphs_engine_forgets_its_graphs_when_a_weight_changes(micro, monkeypatch):
    """Graphs read the weights (and what the model derives from them) at their addresses: a weight updated in
    place, or a parameter replaced by another tensor object (even one at the same address), makes the next
    call capture anew instead of replaying graphs that read the old tensors."""
    quant, var = micro
    graphs = _graphs_on_cpu(var, quant, monkeypatch)
    eng = graphs._engine

    def workspace():
        graphs.sample(LABELS, seeds=SEEDS)
        (ws,) = eng.workspaces[(6, engine._MethodKey(None))]
        return ws

    first = workspace()
    assert workspace() is first  # nothing changed: replayed
    attn = var.blocks[0].attn
    with torch.no_grad():
        attn.q_bias.add_(0.0)  # in place (the version counter moves)
    second = workspace()
    assert second is not first
    old = attn.q_bias
    attn.q_bias = torch.nn.Parameter(old.detach())  # another object, the same memory and version counter
    assert attn.q_bias.data_ptr() == old.data_ptr() and attn.q_bias._version == old._version
    assert workspace() is not second
