"""Check our models against reference fixtures made with the official VAR code.

A fixture directory holds `config.json` (official constructor kwargs), the official state dicts
(`vae.safetensors[.xz]`, `var.safetensors`), `cases.safetensors` (inputs, expected outputs, debug
intermediates) and `cases.json` (the call of each case and a tolerance per key). Cases are recognised
by the official call they record, so fixtures of any model configuration work.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from radar_train.inputs import load_safetensors, read_json
from radar_train.models import VAR, VQVAE, build_var, build_vqvae
from radar_train.models.checkpoint import load_var_weights, load_vqvae_weights
from radar_train.models.configs import VARConfig, VQVAEConfig
from radar_train.sampling import NextScaleSampler, SamplingConfig


class FixtureError(ValueError):
    pass


@dataclass
class CaseResult:
    name: str
    max_abs_err: float
    atol: float
    passed: bool
    worst_key: str
    checked: int  # number of keys compared

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        return (f"{self.name:<16} max_abs_err={self.max_abs_err:.3e}  atol={self.atol:.1e}  {status}"
                f"  ({self.checked} keys; worst {self.worst_key})")


@dataclass
class Fixture:
    root: Path
    config: dict
    cases: dict
    keys: dict
    tensors: dict[str, torch.Tensor]

    @staticmethod
    def load(root: str | Path) -> "Fixture":
        root = Path(root)
        if not root.is_dir():
            raise FixtureError(f"{root}: not a fixture directory")
        for name in ("config.json", "cases.json", "cases.safetensors"):
            if not (root / name).is_file():
                raise FixtureError(f"{root / name}: missing (a fixture needs config.json, cases.json, cases.safetensors)")
        config = read_json(root / "config.json", "fixture config")
        cj = read_json(root / "cases.json", "fixture case file")
        tensors = load_safetensors(root / "cases.safetensors", "fixture tensor file")
        for key in ("cases", "keys"):
            if not isinstance(cj.get(key), dict):
                raise FixtureError(f"{root / 'cases.json'}: no {key!r} object")
        if not cj["cases"]:
            raise FixtureError(f"{root / 'cases.json'}: no cases (a fixture with nothing to check passes nothing)")
        for name, case in cj["cases"].items():
            if not isinstance(case, dict) or not isinstance(case.get("call"), str):
                raise FixtureError(f"{root / 'cases.json'}: case {name!r} has no 'call'")
            problem = _case_problem(case)
            if problem:
                raise FixtureError(f"{root / 'cases.json'}: case {name!r}: {problem}")
            problem = _input_problem(case, tensors)
            if problem:
                raise FixtureError(f"{root / 'cases.safetensors'}: case {name!r}: {problem}")
            missing = [k for k in case.get("inputs", []) if k not in tensors]
            if missing:
                raise FixtureError(f"{root / 'cases.safetensors'}: no tensor {missing[0]!r} (an input of case {name!r})")
        for key, entry in cj["keys"].items():
            atol = entry.get("atol", 0.0) if isinstance(entry, dict) else None
            if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < float("inf"):
                raise FixtureError(f"{root / 'cases.json'}: keys[{key!r}]: 'atol' must be a number >= 0, got {atol!r}"
                                   if isinstance(entry, dict) else f"{root / 'cases.json'}: keys[{key!r}] is not an "
                                   f"object")
        return Fixture(root, config, cj["cases"], cj["keys"], tensors)

    def weights_file(self, stem: str) -> Path:
        for suffix in (".safetensors", ".safetensors.xz", ".pth"):
            p = self.root / f"{stem}{suffix}"
            if p.is_file():
                return p
            if p.is_dir():
                raise FixtureError(f"{p}: is a folder, expected the fixture's {stem} weights file")
        raise FixtureError(f"{self.root}: no {stem}.safetensors[.xz] or {stem}.pth")

    def build_models(self, device: torch.device) -> tuple[VQVAE, VAR]:
        path = self.root / "config.json"
        for key in ("VQVAE_kwargs", "VAR_kwargs"):
            if not isinstance(self.config.get(key), dict):
                raise FixtureError(f"{path}: no {key!r} object")
        try:
            vae_cfg = VQVAEConfig.from_official(self.config["VQVAE_kwargs"])
            var_cfg = VARConfig.from_official(self.config["VAR_kwargs"], vae_cfg)
        except (TypeError, ValueError) as e:
            raise FixtureError(f"{path}: {e}") from None
        vae_cfg = vae_cfg.with_patch_nums(var_cfg.patch_nums) if vae_cfg.patch_nums != var_cfg.patch_nums else vae_cfg
        try:  # (what the configs' checks leave to the modules' constructors)
            vae_meta, var_meta = build_vqvae(vae_cfg, "meta"), build_var(var_cfg, "meta")
        except (TypeError, ValueError) as e:
            raise FixtureError(f"{path}: {str(e).splitlines()[0]}") from None
        vqvae = load_vqvae_weights(vae_meta, self.weights_file("vae"))
        var = load_var_weights(var_meta, self.weights_file("var"))
        return vqvae.to(device).eval(), var.to(device).eval()


def _case_problem(case: dict) -> str | None:
    """What makes a case of cases.json unusable by run_case (its inputs and keyword arguments), or None."""
    inputs, kw, kind = case.get("inputs", []), case.get("kwargs", {}), _kind(case["call"])
    if not isinstance(inputs, list) or not all(isinstance(k, str) for k in inputs):
        return "'inputs' must be a list of tensor names"
    outputs, debug = case.get("outputs"), case.get("debug", [])
    if not isinstance(outputs, list) or not outputs or not all(isinstance(k, str) for k in outputs):
        return "'outputs' must be a non-empty list of tensor names (a case that compares no output checks nothing)"
    if not isinstance(debug, list) or not all(isinstance(k, str) for k in debug):
        return "'debug' must be a list of tensor names"
    if kind in ("decode", "encode", "tf_input") and not inputs:
        return f"a {kind} case needs an input tensor"
    if kind == "forward" and not (any("label" in k for k in inputs) and any("x_BLCv" in k for k in inputs)):
        return "a forward case needs a label and an x_BLCv input"
    if kind == "unknown":
        return (f"unrecognised call {case['call']!r} (a case calls fhat_to_img, img_to_idxBl, idxBl_to_var_input, "
                f"autoregressive_infer_cfg or var(...))")
    if not isinstance(kw, dict):
        return "'kwargs' must be an object"
    numbers = [k for k in ("cfg", "top_k", "top_p", "B", "g_seed") if k in kw and not (k == "g_seed" and kw[k] is None)
               and (isinstance(kw[k], bool) or not isinstance(kw[k], (int, float)))]
    if numbers:  # (null too: only g_seed may be null, as in the official call; int(None) was a traceback)
        return f"kwargs {', '.join(numbers)} must be {'a number' if len(numbers) == 1 else 'numbers'} (null only " \
               f"for g_seed)"
    for key, ok, rule in (("top_k", lambda v: v == int(v) and v >= 0, "a whole number >= 0"),
                          ("top_p", lambda v: 0 <= v <= 1, "between 0 and 1"),
                          ("B", lambda v: v == int(v) and v >= 1, "a whole number >= 1"),
                          ("g_seed", lambda v: v == int(v), "a whole number"),
                          ("cfg", lambda v: v == v and abs(v) != float("inf"), "a finite number")):
        if kw.get(key) is not None and not ok(kw[key]):
            return f"kwargs {key} must be {rule}, got {kw[key]!r}"
    if "more_smooth" in kw and not isinstance(kw["more_smooth"], bool):
        return f"kwargs more_smooth must be true or false, got {kw['more_smooth']!r}"
    return None


def _input_problem(case: dict, tensors: dict[str, torch.Tensor]) -> str | None:
    """What makes a case's stored input tensors unusable by its call (their kind, not the model's sizes), or None."""
    for key in case.get("inputs", []):
        t = tensors.get(key)
        if t is None:
            continue
        wants_int = "label" in key or _kind(case["call"]) == "tf_input"
        if wants_int and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
            return f"input {key!r} must hold integers (class labels or token indices), got {t.dtype}"
        if not wants_int and not t.dtype.is_floating_point:
            return f"input {key!r} must be a floating-point tensor, got {t.dtype}"
    return None


def _check_index_inputs(name: str, case: dict, fx: Fixture, var: VAR) -> None:
    """A case's class labels and token indices are within the model's (an index past an embedding's rows is an
    IndexError on the CPU and a device assert on CUDA)."""
    n, vocab = var.num_classes, var.config.vocab_size
    for key in case.get("inputs", []):
        t = fx.tensors[key]
        if not t.numel() or t.dtype.is_floating_point:
            continue
        if "label" in key and not (0 <= int(t.min()) and int(t.max()) <= n):
            raise FixtureError(f"{fx.root / 'cases.safetensors'}: case {name!r}: input {key!r} holds labels "
                               f"{int(t.min())}..{int(t.max())}, outside the model's 0-{n} (classes 0-{n - 1}, {n}: "
                               f"unconditional)")
        if _kind(case["call"]) == "tf_input" and not (0 <= int(t.min()) and int(t.max()) < vocab):
            raise FixtureError(f"{fx.root / 'cases.safetensors'}: case {name!r}: input {key!r} holds token indices "
                               f"{int(t.min())}..{int(t.max())}, outside the codebook's 0-{vocab - 1}")


def _kind(call: str) -> str:
    for needle, kind in (("fhat_to_img", "decode"), ("img_to_idxBl", "encode"), ("idxBl_to_var_input", "tf_input"),
                         ("autoregressive_infer_cfg", "sample"), ("var(", "forward")):
        if needle in call:
            return kind
    return "unknown"


def _indexed(t: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    out, si = [], 0
    while f"{prefix}.{si}" in t:
        out.append(t[f"{prefix}.{si}"])
        si += 1
    return out


@torch.no_grad()
def run_case(name: str, case: dict, fx: Fixture, vqvae: VQVAE, var: VAR, device) -> dict[str, torch.Tensor]:
    T = {k: v.to(device) for k, v in fx.tensors.items()}
    kind = _kind(case["call"])
    ins = case.get("inputs", [])
    pns = var.patch_nums
    if kind == "decode":
        return {f"{name}.out.img": vqvae.fhat_to_img(T[ins[0]])}
    if kind == "encode":
        img = T[ins[0]]
        f = vqvae.encode(img)
        out = {f"{name}.dbg.f": f}
        for si, idx in enumerate(vqvae.quantize.f_to_indices(f, pns)):
            out[f"{name}.out.idx.{si}"] = idx
        fhats = vqvae.quantize.f_to_indices(f, pns, to_fhat=True)
        for si, fh in enumerate(fhats):
            out[f"{name}.out.f_hat.{si}"] = fh
        out[f"{name}.out.recon"] = vqvae.fhat_to_img(fhats[-1])
        return out
    if kind == "tf_input":
        prefix = ins[0].rsplit(".", 1)[0]
        idx = _indexed(T, prefix)
        if len(idx) != len(pns):  # (an IndexError in the quantizer)
            raise FixtureError(f"{fx.root / 'cases.safetensors'}: case {name!r}: its token maps {prefix}.0, "
                               f"{prefix}.1, ... are {len(idx)}, the model of config.json has {len(pns)} scales")
        return {f"{name}.out.x_BLCv": vqvae.indices_to_var_input(idx, pns)}
    if kind == "forward":
        label = next(T[k] for k in ins if "label" in k)
        x = next(T[k] for k in ins if "x_BLCv" in k)
        return {f"{name}.out.logits": var(label, x)}
    if kind == "sample":
        kw = case.get("kwargs", {})
        label = T[ins[0]] if ins else None
        scfg = SamplingConfig(cfg=float(kw.get("cfg", 1.5)), top_k=int(kw.get("top_k", 0)),
                              top_p=float(kw.get("top_p", 0.0)), noise="official",
                              more_smooth=bool(kw.get("more_smooth", False)))
        sampler = NextScaleSampler(var, vqvae.quantize, scfg)
        B = int(kw.get("B", label.shape[0] if label is not None else fx.config.get("batch_size", 1)))
        res = sampler.sample(label, g_seed=kw.get("g_seed"), batch_size=B, trace=True)
        out = {f"{name}.out.final_f_hat": res.f_hat,
               f"{name}.out.img": vqvae.fhat_to_img(res.f_hat).add(1).mul(0.5)}
        for si, idx in enumerate(res.indices):
            out[f"{name}.out.idx.{si}"] = idx
        for k, v in res.trace.items():
            section = "out" if k.startswith("f_hat.") else "dbg"
            out[f"{name}.{section}.{k}"] = v
        return out
    raise FixtureError(f"case {name}: unrecognised call {case['call']!r}")


def compare(name: str, outputs: list[str], debug: list[str], got: dict[str, torch.Tensor], fx: Fixture) -> CaseResult:
    """The case's outputs and debug intermediates against the fixture's. A key listed but not stored in
    cases.safetensors is skipped (a fixture may omit images for size), but a case passes only if at least one of
    its outputs was compared."""
    worst, worst_ratio, worst_err, worst_atol, checked = "-", -1.0, 0.0, 0.0, 0
    passed = True
    stored = [k for k in outputs if k in fx.tensors]
    if not stored:
        return CaseResult(name, float("inf"), 0.0, False, f"none of its outputs is in cases.safetensors (e.g. "
                          f"{outputs[0]})", 0)
    for key in stored + [k for k in debug if k in fx.tensors]:
        exp = fx.tensors[key]
        atol = float(fx.keys.get(key, {}).get("atol", 0.0))
        if key not in got:
            return CaseResult(name, float("inf"), atol, False, f"{key} (not produced)", checked)
        mine = got[key].detach().cpu()
        checked += 1
        if tuple(mine.shape) != tuple(exp.shape):
            return CaseResult(name, float("inf"), atol, False, f"{key} shape {tuple(mine.shape)} vs {tuple(exp.shape)}", checked)
        if exp.dtype.is_floating_point:
            err = (mine.double() - exp.double()).abs().max().item() if exp.numel() else 0.0
            err = err if err == err else float("inf")  # (NaN on either side: no agreement)
        else:
            err = float((mine.long() != exp.long()).sum().item())  # integers: number of mismatches
            atol = 0.0
        ok = err <= atol
        passed &= ok
        ratio = err / atol if atol > 0 else (0.0 if err == 0 else float("inf"))
        if ratio > worst_ratio:
            worst, worst_ratio, worst_err, worst_atol = key, ratio, err, atol
    return CaseResult(name, worst_err, worst_atol, passed and checked > 0, worst, checked)


def check_fixture(root: str | Path, device: str = "cpu") -> tuple[list[CaseResult], list[str]]:
    """Run every case of a fixture; returns the results and notes (config-level checks)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    fx = Fixture.load(root)
    vqvae, var = fx.build_models(dev)
    notes = []
    phis = fx.config.get("phi_index_per_scale")
    if phis is not None and (not isinstance(phis, list) or not all(type(p) is int for p in phis)):
        raise FixtureError(f"{fx.root / 'config.json'}: phi_index_per_scale must be a list of whole numbers, got "
                           f"{phis!r}")
    if phis is not None:
        mine = vqvae.quantize.phi_indices(len(var.patch_nums))
        notes.append(f"phi_index_per_scale {mine} {'matches' if mine == list(phis) else 'DIFFERS from ' + str(phis)}")
    results = []
    for name, case in fx.cases.items():
        _check_index_inputs(name, case, fx, var)
        try:
            got = run_case(name, case, fx, vqvae, var, dev)
        except (torch.OutOfMemoryError, FixtureError):
            raise
        except (RuntimeError, ValueError, IndexError) as e:  # (inputs of another model's sizes: shape errors)
            shapes = ", ".join(f"{k} {tuple(fx.tensors[k].shape)}" for k in case.get("inputs", []))
            raise FixtureError(f"{fx.root / 'cases.safetensors'}: case {name!r}: its inputs ({shapes}) do not fit "
                               f"the model of config.json: {str(e).splitlines()[0]}") from None
        results.append(compare(name, list(case["outputs"]), list(case.get("debug", [])), got, fx))
    return results, notes
