"""Method specs: one string per acceleration setting, as benchmarks and measurements take them.

A spec is `method` or `method:options`, the options '+'-separated, each a preset name, a flag or key=value:

- `none` (also `vanilla`): no acceleration;
- `fastvar` (preset default), `fastvar:mild`, `fastvar:aggressive`; `fastvar:prune=4:0.3/6:0.5/8:0.6` (explicit
  pruning ratios per scale side); `fastvar:budget=0.5`: pivotal token selection at an *attention* budget, the
  ratios that make each of the SCA-Mask active scales (`scales=4/6/8`, default the last three) compute about that
  share of vanilla's query·key pairs (`radar_train.accel.sca.fastvar_for_attention_budget`; needs the model's
  patch_nums); further options `cache_scale=N`, `layers=0/1/2`;
- `stagevar` (preset default), `stagevar:paper`; `stagevar:scales=6:0.96/8:0`, `single_branch=off`,
  `rank_ratios=F`, `default_rank_ratio=X`, `min_rank=N`, `rp_scale=token_norm`;
- `sca:<options>` (`radar_train.accel.sca.args_from_spec`), e.g. `sca:window+aggressive`,
  `sca:default+mask_file=m.safetensors`, `sca:compute_budget=0.5+memory_budget=1+mask_file=m.safetensors`.

`parse_spec` gives the `AccelArgs` (every value read, ratios of a budget resolved against patch_nums);
`build_spec` the validated method. Every bad spec is one ValueError line that names it.
"""
from __future__ import annotations

from typing import Optional, Sequence

from radar_train.accel.base import AccelMethod
from radar_train.config import AccelArgs, FastVARArgs, StageVARArgs

METHODS = ("none", "fastvar", "stagevar", "sca")
ALIASES = {"vanilla": "none"}


def _fail(spec: str, what: str) -> ValueError:
    return ValueError(f"method spec {spec!r}: {what}")


def _sides(spec: str, key: str, value: str) -> list[int]:
    try:
        out = [int(x) for x in value.split("/")]
    except ValueError:
        raise _fail(spec, f"cannot read {key}={value!r} (scale sides joined by '/', e.g. 4/6/8)") from None
    twice = sorted({x for x in out if out.count(x) > 1})
    if twice:
        raise _fail(spec, f"{key}={value!r} names the side {twice[0]} twice")
    return out


def _side_map(spec: str, key: str, value: str) -> dict[int, float]:
    """'4:0.3/6:0.5' -> {4: 0.3, 6: 0.5}."""
    out: dict[int, float] = {}
    for part in value.split("/"):
        side, colon, v = part.partition(":")
        try:
            if not colon:
                raise ValueError
            s, x = int(side), float(v)
        except ValueError:
            raise _fail(spec, f"cannot read {key}={value!r} (side:value pairs joined by '/', e.g. "
                              f"4:0.3/6:0.5)") from None
        if s in out:
            raise _fail(spec, f"{key} lists scale {s} twice")
        out[s] = x
    return out


def _options(spec: str, opts: str) -> list[tuple[str, Optional[str]]]:
    """[(key, value or None for a bare word)] of '+'-separated options."""
    out = []
    for part in (x.strip() for x in opts.split("+")):
        if not part:
            raise _fail(spec, "empty option (two '+' in a row or a trailing '+')")
        key, eq, value = part.partition("=")
        if eq and not (key and value):
            raise _fail(spec, f"option {part!r} is not key=value")
        if any(k == key for k, _ in out):  # the last would win, silently
            raise _fail(spec, f"option {key!r} is given twice")
        out.append((key, value if eq else None))
    return out


def _fastvar(spec: str, opts: str, patch_nums: Optional[Sequence[int]]) -> FastVARArgs:
    from radar_train.accel.fastvar import PRESETS
    from radar_train.accel.sca import default_scales, fastvar_for_attention_budget

    a = FastVARArgs()
    preset = budget = scales = None
    for key, value in _options(spec, opts) if opts else []:
        if value is None:
            if key not in PRESETS:
                raise _fail(spec, f"{key!r} is not a fastvar preset ({', '.join(PRESETS)}) nor key=value "
                                  f"(budget, prune, scales, cache_scale, layers)")
            if preset is not None:
                raise _fail(spec, f"give one preset, not {preset} and {key}")
            preset = key
        elif key == "budget":
            try:
                budget = float(value)
            except ValueError:
                raise _fail(spec, f"cannot read budget={value!r} (an attention share in (0, 1])") from None
            if not 0.0 < budget <= 1.0:
                raise _fail(spec, f"budget {budget} is not an attention share in (0, 1]")
        elif key == "prune":
            a.prune = _side_map(spec, key, value)
        elif key == "scales":
            scales = _sides(spec, key, value)
        elif key == "cache_scale":
            try:
                a.cache_scale = int(value)
            except ValueError:
                raise _fail(spec, f"cannot read cache_scale={value!r} (a scale side)") from None
        elif key == "layers":
            try:
                a.layers = [int(x) for x in value.split("/")]
            except ValueError:
                raise _fail(spec, f"cannot read layers={value!r} (block indices joined by '/')") from None
        else:
            raise _fail(spec, f"unknown fastvar option {key!r} (budget, prune, scales, cache_scale, layers)")
    given = [name for name, v in (("a preset", preset), ("prune", a.prune), ("budget", budget)) if v is not None]
    if len(given) > 1:
        raise _fail(spec, f"give one of a preset, prune and budget, not {' and '.join(given)}")
    if scales is not None and budget is None:
        raise _fail(spec, "scales= goes with budget= (prune= names its scales itself)")
    if budget is not None:
        if patch_nums is None:
            raise _fail(spec, "budget= is resolved against the model's scales: parse it with the model's patch_nums")
        pns = [int(p) for p in patch_nums]
        scales = scales or list(default_scales(pns))
        bad = [s for s in scales if s not in pns]
        if bad:
            raise _fail(spec, f"scales {bad} are not in the model's patch_nums {tuple(pns)}")
        if pns.index(min(scales)) == 0:
            raise _fail(spec, "scales cannot include the first scale")
        method, _ = fastvar_for_attention_budget(budget, pns, scales)
        a.prune = {int(s): float(r) for s, r in method.prune}  # (a scale left whole is not among them)
    a.preset = None if a.prune is not None else (preset or "default")
    return a


def _stagevar(spec: str, opts: str) -> StageVARArgs:
    from radar_train.accel.stagevar import PRESETS

    a = StageVARArgs()
    kinds = {"default_rank_ratio": float, "min_rank": int, "rank_ratios": str}
    choices = {"single_branch": ("cond", "uncond", "off"), "rp_scale": ("paper", "token_norm")}
    options = _options(spec, opts) if opts else []
    given = [k for k, v in options if v is None] + ["scales=" for k, _ in options if k == "scales"]
    if len(given) > 1:  # (_options refuses a key given twice)
        raise _fail(spec, f"give one preset or scales=, not {' and '.join(given)}")
    for key, value in options:
        if value is None:
            if key not in PRESETS:
                raise _fail(spec, f"{key!r} is not a stagevar preset ({', '.join(PRESETS)}) nor key=value")
            a.preset = key
        elif key == "scales":
            a.scales, a.preset = _side_map(spec, key, value), None
        elif key in choices:
            if value not in choices[key]:
                raise _fail(spec, f"{key}={value!r}: one of {', '.join(choices[key])}")
            setattr(a, key, value)
        elif key in kinds:
            try:
                setattr(a, key, kinds[key](value))
            except ValueError:
                raise _fail(spec, f"cannot read {key}={value!r}") from None
        else:
            raise _fail(spec, f"unknown stagevar option {key!r} (scales, single_branch, rank_ratios, "
                              f"default_rank_ratio, min_rank, rp_scale)")
    return a


def parse_spec(spec: str, patch_nums: Optional[Sequence[int]] = None) -> AccelArgs:
    """The `AccelArgs` of a method spec (module docstring). `patch_nums` (the model's scale sides) resolves a
    FastVAR attention budget into pruning ratios; other specs do not need it. ValueError names the spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"method spec {spec!r}: empty (use none, fastvar[:...], stagevar[:...] or sca:...)")
    name, colon, opts = spec.strip().partition(":")
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise _fail(spec, f"unknown method {name!r}; available: {', '.join(METHODS)}")
    if colon and not opts:
        raise _fail(spec, "nothing after ':' (drop it, or give options)")
    args = AccelArgs(method=name)
    if name == "none":
        if opts:
            raise _fail(spec, "none takes no options")
    elif name == "fastvar":
        args.fastvar = _fastvar(spec, opts, patch_nums)
    elif name == "stagevar":
        args.stagevar = _stagevar(spec, opts)
    else:
        from radar_train.accel.sca import args_from_spec

        try:
            args.sca = args_from_spec(opts)
        except ValueError as e:
            msg, inner = str(e), f"sca spec {opts!r}: "
            raise _fail(spec, msg[len(inner):] if msg.startswith(inner) else msg) from None
    return args


def build_spec(spec: str, patch_nums: Sequence[int], depth: int, var_identity=None) -> AccelMethod:
    """The validated method of a spec for a model of these scales and depth (and, given its identity, these
    weights: an SCA mask file calibrated on others is refused). ValueError / ConfigError."""
    from radar_train.accel import build_accel

    return build_accel(parse_spec(spec, patch_nums), patch_nums, depth, var_identity)


def build_specs(specs: Sequence[str], var, var_identity, option: str) -> dict[str, AccelMethod]:
    """{spec: its method for a VAR (or its config: `var` has patch_nums and depth)} (`build_spec`); a spec that
    does not parse or fit is a ValueError naming `option`."""
    out = {}
    for spec in specs:
        try:
            out[spec] = build_spec(spec, var.patch_nums, var.depth, var_identity)
        except ValueError as e:
            raise ValueError(f"{option}: {e}") from None
    return out
