"""Sampling engines: how `NextScaleSampler` runs the device step of each scale. The tokens do not depend
on the engine (see the exactness notes below).

- `eager`: plain PyTorch calls. Every device, both noise modes, every method.
- `graphs` (CUDA, per_sample noise): every piece of a run (its start, each scale, a fork) is captured once
  as a CUDA graph (`torch.cuda.CUDAGraph`) in a *workspace*: static buffers (the KV cache preallocated to
  the run's capacity — the whole sequence, or less for a method that evicts tokens (`AccelMethod.kv_capacity`)
  — f_hat, the call's inputs) and the graphs' memory pool. Later calls with the same
  batch size and method copy their inputs (labels, noise keys, the method's `AccelRun.inputs`) into the
  workspace and replay one graph per scale: the host launches nothing else. The Python side of a run
  (KV fill counts, the method's bookkeeping, the index list, ...) after each piece is recorded at capture
  and restored at replay, so `advance` / `fork` / `output` work as with `eager`.
- `compiled` (per_sample noise). On CUDA: `graphs`, with the blocks' AdaLN inputs (layer norm and modulation:
  one kernel instead of two) and q/k normalisation (one kernel instead of four) through `torch.compile`
  (`compiled_block_ops`: inductor, rows and tokens dynamic, so each piece compiles once, in seconds, for every
  scale, block, batch size and method; compiling the whole step took about a minute per scale at VAR-d16 cold,
  ten per method). On the CPU, where the host's per-operator overhead is the cost at the batch sizes it samples,
  the scales of each `advance` call (a whole run; before and after a fork for pairs) through `torch.compile` as
  one graph (inductor, fullgraph, static shapes: one compilation per run, batch size and method; a minute for the
  tiny model cold, many for real ones); the start and forks stay eager.
- `auto`: `AUTO_ON_CUDA` on CUDA with per_sample noise, `eager` otherwise. If a capture fails under
  `auto`, the sampler warns once and continues eagerly (the run in progress included).

Runs that cannot be captured run eagerly under every engine: `trace=True`, and methods that do not
declare `capturable` (e.g. the calibration probes, which observe on the host); an explicitly chosen
captured engine refuses such a method with one line instead.

Workspaces are cached per sampler and key (batch size, method), so radar-cache / radar-generate /
radar-fid batches reuse them; a last batch of another size gets its own. A workspace is held by the runs
living in it until they are garbage (a fork holds its parent's too); a run started while the matching
workspace is held gets another one. KV buffer sets are shared by all workspaces of a model (per rows and
dtype and per-block capacity) that are not held at the same time, so e.g. vanilla, FastVAR and StageVAR
workspaces use one set and a forked pair two; an SCA-Mask run that evicts tokens has a smaller set of its
own, and the vanilla branch of its forked pair a whole-sequence one.

Exactness: `graphs` replays the kernels that `eager` launches on the same inputs, so the tokens and f_hat
are the same bit for bit when the kernels are deterministic (fp32, per_sample noise; checked by the gpu
tests). `compiled` fuses and reorders float operations: the same tokens in the tested cases, f_hat within
float rounding.
"""
from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from radar_train.accel.base import AccelMethod, branch_rows, is_capturable
from radar_train.models import fused

if TYPE_CHECKING:  # pragma: no cover
    from radar_train.sampling import NextScaleSampler, SamplingState

ENGINES: tuple[str, ...] = ("eager", "graphs", "compiled")
AUTO_ON_CUDA = "graphs"
"""What `auto` picks on CUDA with per_sample noise. graphs: exact (the eager kernels, replayed), no
compilation time, and it removes the host overhead that bounded the d16 loop; compiled launches fewer kernels
but is not bit-exact (inductor's fused layer norm rounds otherwise), so it is a choice, not the default, until
it is measured faster (`python -m radar_train.bench.gpu_suite --engines eager,graphs,compiled`)."""
COMPILE_BACKEND = "inductor"  # tests trace with "eager" / "aot_eager" (fullgraph) to prove the step has no breaks
RECOMPILE_LIMIT = 4096  # the CPU's compiled runs: one static graph per run start and end, batch size and method


def engines_for(device: torch.device | str) -> tuple[str, ...]:
    """The engines a benchmark runs on `device` by default: eager, and on CUDA graphs and compiled (its pieces
    compile in seconds). On the CPU compiled (the whole run as one graph: minutes for real models) only when named."""
    return ("eager", "graphs", "compiled") if torch.device(device).type == "cuda" else ("eager",)


def resolve_engine(name: str, device: torch.device, noise: str) -> str:
    """The engine `name` (a `sampling.engine` value) stands for on `device`; ValueError (one line) for a
    combination that cannot run."""
    if name == "auto":
        return AUTO_ON_CUDA if device.type == "cuda" and noise == "per_sample" else "eager"
    if name not in ENGINES:
        raise ValueError(f"sampling.engine must be auto or one of {', '.join(ENGINES)}, got {name!r}")
    if name != "eager" and noise != "per_sample":
        raise ValueError(f"sampling.engine {name} needs noise='per_sample' (official noise draws from torch "
                         f"generators; it runs with engine eager or auto)")
    if name == "graphs" and device.type != "cuda":
        raise ValueError(f"sampling.engine graphs needs a CUDA device (the model is on {device}); use eager or "
                         f"compiled")
    return name


def make_engine(name: str, sampler: "NextScaleSampler") -> "EagerEngine":
    fallback = sampler.config.engine == "auto"
    if name == "eager":
        return EagerEngine(sampler)
    if name == "compiled" and sampler.device.type != "cuda":
        return CompiledEngine(sampler)
    return GraphEngine(sampler, compiled=name == "compiled", fallback=fallback)


# ---------------------------------------------------------------------------- eager
class EagerEngine:
    """Plain calls: `start` does the device work of the start, each scale plans and computes."""

    name = "eager"

    def __init__(self, sampler: "NextScaleSampler"):
        self.sampler = sampler

    def begin(self, state: "SamplingState", accel: Optional[AccelMethod]) -> None:
        self.sampler._begin(state)

    def advance(self, state: "SamplingState", until: int) -> None:
        """Scales state.si .. until−1 (fewer where the method skips the rest), one `scale` each."""
        self.sampler._run(state, until, step=self.scale)

    def scale(self, state: "SamplingState") -> None:
        self.sampler._scale(state)

    def fork(self, state: "SamplingState", accel: Optional[AccelMethod]) -> "SamplingState":
        return self.sampler._fork_state(state, accel)

    def _refuse(self, state: "SamplingState", accel: Optional[AccelMethod]) -> bool:
        """Whether this run must run eagerly: trace, or a method that is not capturable (refused by an
        explicitly chosen engine)."""
        if not is_capturable(accel) and self.sampler.config.engine != "auto":
            raise ValueError(f"sampling.engine {self.name} cannot capture the {accel.name!r} method "
                             f"({type(accel).__name__} is not capturable); use engine eager or auto")
        return state.trace is not None or not is_capturable(accel)


# ---------------------------------------------------------------------------- compiled, CPU
class CompiledEngine(EagerEngine):
    """The scales of each `advance` call (a whole run, or the scales before and after a fork) through
    torch.compile as one graph (fullgraph, static shapes); the start and forks stay eager."""

    name = "compiled"

    def __init__(self, sampler: "NextScaleSampler"):
        super().__init__(sampler)
        self._run: Optional[Callable] = None

    def begin(self, state: "SamplingState", accel: Optional[AccelMethod]) -> None:
        state.eager = self._refuse(state, accel)
        super().begin(state, accel)

    def advance(self, state: "SamplingState", until: int) -> None:
        if state.eager:
            super().advance(state, until)
            return
        if self._run is None:
            self._run = compile_run(self.sampler)
        self._run(state, until)


def raise_recompile_limits() -> None:
    """torch._dynamo's recompile limits raised to at least RECOMPILE_LIMIT, for good (never lowered). Set instead
    by a `config.patch` around each scale, as before 2026-12-05, they took 0.2 ms of the CPU's compiled tiny-model
    call at batch 1 (2.39 -> 2.17 ms, tiny_a shapes, 2 cores)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))


def compile_run(sampler: "NextScaleSampler") -> Callable:
    """The CPU compiled engine's function: `sampler._run` (the scales from state.si to `until`, each planned and
    computed) through torch.compile, fullgraph, static shapes: one graph per run start, end, batch size and method,
    so one guard check and one call into compiled code per `advance` instead of one per scale (compiling each
    scale on its own, the guards and the call took 0.3 ms of each tiny-model scale at batch 1, as long as its
    kernels: 2.71 -> 1.78 ms per vanilla call interleaved with FastVAR and StageVAR, tiny_a shapes, 2 cores,
    2026-12-05). With inductor on the CPU its graphs run from a C++ wrapper (`cpp_wrapper`), not a Python one:
    the Python wrapper's tensor views, stride checks and allocations doubled the compiled tiny-model call at
    batch 1 when it ran between other work (interleaved benchmark, 2026-12-05: 1.33x -> 1.59x the official
    sampler)."""
    raise_recompile_limits()
    options = {"cpp_wrapper": True} if COMPILE_BACKEND == "inductor" and sampler.device.type == "cpu" else None
    return torch.compile(sampler._run, backend=COMPILE_BACKEND, fullgraph=True, dynamic=False, options=options)


def _dynamic(t: torch.Tensor, *dims: int) -> torch.Tensor:
    """Compile `t`'s dims as symbols, those of size > 1 (torch specialises sizes 0 and 1)."""
    for d in dims:
        if t.shape[d] > 1:
            torch._dynamo.maybe_mark_dynamic(t, d)
    return t


def compiled_block_ops() -> fused.BlockOps:
    """`EAGER_OPS`'s pieces through torch.compile (inductor, fullgraph) with their row and token counts dynamic:
    each piece compiles once per dtype and autocast state (again for a single row or token, which torch
    specialises) and serves every scale, block, batch size and method: FastVAR's kept tokens and StageVAR's
    single CFG branch included. The same functions as eager, so the same values up to float rounding (inductor
    fuses the layer norm with the modulation, and the norm with the multiply)."""
    raise_recompile_limits()
    adaln = torch.compile(fused.adaln, backend=COMPILE_BACKEND, fullgraph=True)
    qk_normalize = torch.compile(fused.l2_normalize_qk_packed, backend=COMPILE_BACKEND, fullgraph=True)

    def adaln_dynamic(x, scale1p, shift, eps):
        return adaln(_dynamic(x, 0, 1), _dynamic(scale1p, 0), _dynamic(shift, 0), eps)

    def qk_normalize_dynamic(qkv, qk_mul):
        return qk_normalize(_dynamic(qkv, 0, 1), qk_mul)

    return fused.BlockOps(adaln=adaln_dynamic, qk_normalize=qk_normalize_dynamic)


# ---------------------------------------------------------------------------- CUDA graphs
BOOKKEEPING = ("handle", "seeds", "generator")  # fields of a run that a replay does not restore


@dataclass
class _Piece:
    graph: Optional[torch.cuda.CUDAGraph]  # None: nothing ran on the device (a skipped scale)
    after: "SamplingState"  # the run's Python side after the piece (its tensors are the static buffers)


class _KVSet:
    """Static KV buffers (one (k, v) per block, rows × heads × the block's capacity × head_dim) shared by the
    workspaces of a model (same rows, dtype and capacity) that are not held at the same time."""

    def __init__(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.buffers, self.busy = buffers, False

    def rows(self, sl: slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k[sl], v[sl]) for k, v in self.buffers]


_KV_SETS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, list[_KVSet]]]" = weakref.WeakKeyDictionary()


def _free_kv_set(var, rows: int, dtype: torch.dtype, capacity: tuple[int, ...],
                 avoid: Optional[_KVSet] = None) -> _KVSet:
    sets = _KV_SETS.setdefault(var, {}).setdefault((rows, dtype, capacity), [])
    for s in sets:
        if not s.busy and s is not avoid:
            return s
    s = _KVSet(var.kv_buffers(rows, dtype, capacity))
    sets.append(s)
    return s


class _Workspace:
    """The static buffers and captured pieces of one kind of run."""

    def __init__(self, kv: _KVSet):
        self.kv = kv
        self.pool = None  # the graphs' memory pool (made at the first capture)
        self.busy = False
        self.entry: Optional[_Piece] = None  # the start (or, for a fork, the copy from the parent)
        self.inputs: dict[str, torch.Tensor] = {}  # static copies of the per-call inputs
        self.scales: dict[int, _Piece] = {}
        self.children: dict[tuple, list["_Workspace"]] = {}  # fork key -> workspaces of the forked runs

    def usable(self) -> bool:
        return not self.busy and not self.kv.busy


class _Lease:
    """A run's hold on its workspace (and the workspace's KV buffers) until the run is garbage; a fork's
    lease keeps its parent's."""

    def __init__(self, ws: _Workspace, parent: Optional["_Lease"] = None):
        self.ws, self.parent = ws, parent
        ws.busy = ws.kv.busy = True
        weakref.finalize(self, _release, ws)


def _release(ws: _Workspace) -> None:
    ws.busy = ws.kv.busy = False


class _MethodKey:
    """A method as a dictionary key by identity (the key keeps it alive, so its id stays unique)."""

    def __init__(self, method: Optional[AccelMethod]):
        self.method = method

    def __eq__(self, other) -> bool:
        return isinstance(other, _MethodKey) and other.method is self.method

    def __hash__(self) -> int:
        return id(self.method)


def snapshot(state: "SamplingState") -> "SamplingState":
    from radar_train.sampling import copy_state

    snap = copy_state(state)
    for name in BOOKKEEPING:
        setattr(snap, name, None)
    return snap


def restore(state: "SamplingState", snap: "SamplingState") -> None:
    from radar_train.sampling import copy_state

    fresh = copy_state(snap)
    for name, value in vars(fresh).items():
        if name not in BOOKKEEPING:
            setattr(state, name, value)


class GraphEngine(EagerEngine):
    """CUDA graphs per piece of a run (see the module docstring); `compiled`: with `compiled_block_ops`."""

    def __init__(self, sampler: "NextScaleSampler", compiled: bool = False, fallback: bool = False):
        super().__init__(sampler)
        self.name = "compiled" if compiled else "graphs"
        self.compiled, self.fallback = compiled, fallback
        self._ops: Optional[fused.BlockOps] = None
        self.workspaces: dict[tuple, list[_Workspace]] = {}
        self._weights: Optional[tuple] = None

    # -------------------------------------------------------------- pieces
    def _compute(self, state: "SamplingState") -> None:
        if not self.compiled:
            self.sampler._compute(state)
            return
        if self._ops is None:
            self._ops = compiled_block_ops()
        self.sampler._compute(state, self._ops)

    def _check_weights(self) -> None:
        """Graphs read the weights at their addresses: forget every workspace when a weight tensor was
        replaced (e.g. `cast_body_`, `.to()`) or updated in place (its version counter moved: the tensors the
        model derives and caches from it, e.g. the attention's qkv bias, are replaced, and graphs would read
        the freed ones)."""
        s = self.sampler
        sig = tuple((id(t), t.data_ptr(), None if t.is_inference() else t._version)  # (a new tensor can reuse an address)
                    for m in (s.var, s.quantizer) for t in (*m.parameters(), *m.buffers()))
        if sig != self._weights:
            self.workspaces.clear()
            self._weights = sig

    def _find(self, pool: dict, key: tuple, make: Callable[[], _Workspace]) -> _Workspace:
        for ws in pool.get(key, []):
            if ws.usable():
                return ws
        ws = make()
        pool.setdefault(key, []).append(ws)
        return ws

    def _capture(self, ws: _Workspace, piece: Callable, state: "SamplingState",
                 warm: Callable[[], "SamplingState"]) -> tuple[torch.cuda.CUDAGraph, object]:
        """Capture `piece(state)` as a CUDA graph in the workspace's memory pool and replay it once (a capture
        does not execute). First the piece runs eagerly on a side stream on `warm()` (a throwaway copy of
        the state), so that lazy initialisation (cuBLAS workspaces, compiled kernels, cached constants) happens
        outside the capture. Returns the graph and what `piece` returned."""
        dev = self.sampler.device
        if ws.pool is None:
            ws.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            piece(warm())
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=ws.pool, capture_error_mode="thread_local"):
            result = piece(state)
        graph.replay()
        return graph, result

    def _failed(self, what: str, e: Exception, stacklevel: int = 4) -> None:
        """A capture failed: under auto warn once (at the sampler's call, `stacklevel` frames up) and make the sampler
        eager; an explicit engine raises."""
        msg = f"capturing {what} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if not self.fallback:
            raise RuntimeError(f"sampling.engine {self.name}: {msg}; use sampling.engine eager") from e
        warnings.warn(f"sampling.engine auto: {msg}; sampling eagerly from here on", RuntimeWarning, stacklevel=stacklevel)
        self.sampler._engine = EagerEngine(self.sampler)
        self.workspaces.clear()

    # -------------------------------------------------------------- the engine interface
    def begin(self, state: "SamplingState", accel: Optional[AccelMethod]) -> None:
        state.eager = self._refuse(state, accel)
        if state.eager:
            self.sampler._begin(state)
            return
        self._check_weights()
        rows = 2 * state.batch_size
        var, dtype = self.sampler.var, self.sampler.kv_dtype
        ws = self._find(self.workspaces, (rows, _MethodKey(accel)),  # (a method's capacity is fixed)
                        lambda: _Workspace(_free_kv_set(var, rows, dtype, state.kv_capacity)))
        state.handle = _Lease(ws)
        run_inputs = {} if state.accel is None else state.accel.inputs()
        if ws.entry is not None:
            ws.inputs["labels"].copy_(state.labels)
            ws.inputs["token_keys"].copy_(state.token_keys)
            for name, t in run_inputs.items():
                ws.inputs[f"accel.{name}"].copy_(t)
            ws.entry.graph.replay()
            restore(state, ws.entry.after)
            return
        before = snapshot(state)
        # the first call's inputs become the static inputs (the labels are copied: they may be the caller's)
        ws.inputs = {"labels": state.labels.clone(), "token_keys": state.token_keys,
                     **{f"accel.{name}": t for name, t in run_inputs.items()}}
        state.labels = ws.inputs["labels"]
        try:
            graph, _ = self._capture(ws, lambda st: self.sampler._begin(st, ws.kv.buffers), state,
                                     lambda: copy.copy(state))
        except Exception as e:  # noqa: BLE001 - any capture problem: fall back (auto) or one clear error
            pool = self.workspaces.get((rows, _MethodKey(accel)), [])
            if ws in pool:
                pool.remove(ws)
            self._failed("the start of a run", e)
            restore(state, before)
            state.handle = None
            self.sampler._begin(state)
            return
        ws.entry = _Piece(graph, snapshot(state))

    def scale(self, state: "SamplingState") -> None:
        if state.handle is None:
            super().scale(state)
            return
        ws: _Workspace = state.handle.ws
        piece = ws.scales.get(state.si)
        if piece is not None:
            if piece.graph is not None:
                piece.graph.replay()
            restore(state, piece.after)
            return
        si, before = state.si, snapshot(state)
        if not self.sampler._plan(state):
            ws.scales[si] = _Piece(None, snapshot(state))
            return

        def warm() -> "SamplingState":  # its own KV cache (of the same capacity) and f_hat: the step writes both
            other = self.sampler._fork_state(state, None, kv_capacity=state.kv_capacity)
            other.accel = None if state.accel is None else state.accel.fork()
            return other

        try:
            graph, _ = self._capture(ws, self._compute, state, warm)
        except Exception as e:  # noqa: BLE001
            self._failed(f"scale {si}", e, stacklevel=5)  # (through sampler._run)
            restore(state, before)  # the device buffers are as before the scale: a capture does not execute
            self.sampler._engine.scale(state)
            return
        ws.scales[si] = _Piece(graph, snapshot(state))

    def fork(self, state: "SamplingState", accel: Optional[AccelMethod]) -> "SamplingState":
        if state.handle is None:
            return super().fork(state, accel)
        parent: _Workspace = state.handle.ws
        key = (state.si, _MethodKey(accel))
        rows = state.batch_size * 2
        var, dtype = self.sampler.var, self.sampler.kv_dtype
        capacity = self.sampler._fork_capacity(state, accel)
        ws = self._find(parent.children, key,
                        lambda: _Workspace(_free_kv_set(var, rows, dtype, capacity, avoid=parent.kv)))
        lease = _Lease(ws, parent=state.handle)
        if ws.entry is not None:
            ws.entry.graph.replay()
            child = copy.copy(state)
            restore(child, ws.entry.after)
            child.handle = lease
            return child
        buffers = ws.kv.rows(branch_rows(state.branch, state.batch_size))
        try:  # (the warm-up copies the same prefix into the same buffers: harmless)
            graph, child = self._capture(ws, lambda st: self.sampler._fork_state(st, accel, buffers), state,
                                         lambda: state)
        except Exception as e:  # noqa: BLE001
            children = parent.children.get(key, [])
            if ws in children:
                children.remove(ws)
            del lease
            self._failed("a fork", e)
            return self.sampler._fork_state(state, accel)
        ws.entry = _Piece(graph, snapshot(child))
        child.handle = lease
        return child
