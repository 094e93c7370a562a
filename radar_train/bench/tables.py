"""Markdown tables from the benchmark result files (`benchmarks/**/*.json`, see `radar_train.bench.record`).

    python -m radar_train.bench.tables                       # print every table
    python -m radar_train.bench.tables --write README.md     # fill the <!-- table:NAME --> blocks
    python -m radar_train.bench.tables --write README.md --check   # exit 1 if a block is out of date

A table's NAME is its file's path under the root without `.json` (`gpu/2026-11-20-h200`), or
`<folder>/latest` for the newest file of a folder (by its `date`). In a markdown file, a block is
`<!-- table:NAME -->` ... `<!-- /table:NAME -->`; `--write` replaces what lies between the two markers
and nothing else. Each table says the date, device, torch/CUDA, commit and command of its file.
`NAME#targets` renders the file's sampling rows against the GPU targets instead (`render_targets`: one column
per preset, the default engine's numbers, ✓ / ✗ on the presets the targets name). `latest` is the newest file
with rows: a file of other sections only (a profile run, say) is shown by its own NAME.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

COLUMNS = ("preset", "method", "engine", "noise", "batch", "images/s", "images/s e2e", "vs official",
           "vs official e2e", "vs vanilla", "pair / separate", "peak memory")
MASK_COLUMNS = ("ideal (FLOP model)", "attention pairs kept", "KV kept at last scale", "KV allocated")
"""Added when a file has rows with a FLOP model: SCA-Mask, FastVAR and StageVAR (`radar_train.bench.accel.method_accounting`)."""
AGREEMENT_COLUMNS = ("tokens = eager", "max f̂ diff vs eager")
"""Added when a file has rows of an engine compared with eager (`radar_train.bench.accel.engine_agreement`)."""
_BLOCK = re.compile(r"(<!-- table:(?P<name>[^ ]+?) -->\r?\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)
_MALFORMED = (TypeError, KeyError, AttributeError, IndexError, ValueError)  # a field of the wrong kind (hand-made)


def _is_train(doc) -> bool:
    """A `radar-bench train` result (radar_train.train.bench): rows with a benchmark's name and a ratio."""
    rows = doc.get("rows") if isinstance(doc, dict) else None
    return isinstance(rows, list) and bool(rows) and \
        all(isinstance(r, dict) and "name" in r and "ratio" in r and "images_per_s" not in r for r in rows)


def load_results(root: Path) -> dict[str, dict]:
    """{NAME: document} of every result file under `root`, plus `<folder>/latest` aliases; JSON files
    of other kinds (no 'rows' list) map to None."""
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: no such folder")
    docs: dict[str, dict] = {}
    for path in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a JSON file ({e})") from e
        name = path.relative_to(root).with_suffix("").as_posix()
        # another kind of result (rows without images_per_s or method, e.g. benchmarks/toyworld/.../metrics.json,
        # or tradeoff.json, whose rows have images_per_s but a setting, no method): None
        speed = isinstance(doc, dict) and isinstance(doc.get("rows"), list) and \
            all(isinstance(r, dict) and "images_per_s" in r and "method" in r for r in doc["rows"])
        docs[name] = doc if speed or _is_train(doc) else None
    latest: dict[str, tuple] = {}
    for name, doc in docs.items():
        # (a file of other sections only, e.g. a profile run, is named; so is a training result)
        if doc is None or not doc["rows"] or _is_train(doc):
            continue
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        key = (str(doc.get("date") or ""), name)
        if folder not in latest or key > latest[folder]:
            latest[folder] = key
    for folder, (_, name) in latest.items():
        docs.setdefault(f"{folder}/latest" if folder else "latest", docs[name])
    return docs


def _num(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _ips(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _table(rows: list) -> list[str]:
    masked = any(isinstance(r, dict) and r.get("ideal_speedup") is not None for r in rows)
    compared = any(isinstance(r, dict) and ("tokens_equal_vs_eager" in r or "agreement_failed" in r) for r in rows)
    columns = COLUMNS + (MASK_COLUMNS if masked else ()) + (AGREEMENT_COLUMNS if compared else ())
    lines = ["| " + " | ".join(columns) + " |",
             "| " + " | ".join("---:" if c not in ("preset", "method", "engine", "noise") else "---" for c in columns) + " |"]
    for r in rows:
        if not isinstance(r, dict) or "method" not in r:
            continue
        peak = r.get("peak_memory_bytes")
        preset = str(r.get("preset", "-"))
        model = str(r.get("model") or f"preset {preset}")
        if model != f"preset {preset}":  # built from another configuration (e.g. tiny -> tiny_a)
            preset += f" ({model.split()[0]})"
        cells = [preset, str(r["method"]), str(r.get("engine") or "-"), str(r.get("noise") or "-"),
                 str(r.get("batch_size", "-"))]
        if r.get("skipped"):
            cells += [f"skipped: {r['skipped']}".replace("|", "/")] + ["-"] * (len(columns) - 6)
        else:
            cells += [_ips(r.get("images_per_s")), _ips(r.get("images_per_s_e2e")),
                      _num(r.get("vs_official"), ".2f", "×"), _num(r.get("vs_official_e2e"), ".2f", "×"),
                      _num(r.get("speedup_vs_vanilla"), ".2f", "×"), _num(r.get("pair_vs_separate"), ".3f"),
                      "-" if peak is None else f"{peak / 2**30:.2f} GiB"]
            if masked:
                cells += [_num(r.get("ideal_speedup"), ".3f", "×"), _num(r.get("attention_pairs_kept"), ".3f"),
                          _num(r.get("kv_tokens_kept_at_last_scale"), ".3f"), _num(r.get("kv_allocated_ratio"), ".3f")]
            if compared:
                cells += ([f"failed: {r['agreement_failed']}".replace("|", "/"), "-"] if "agreement_failed" in r else
                          [_num(r.get("tokens_equal_vs_eager"), ".4f"), _num(r.get("f_hat_max_diff_vs_eager"), ".3g")])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rounds(rows: list) -> str:
    """" · 1 warm-up and 3–5 timed rounds per row (medians)": how much each number of the table rests on."""
    def values(key: str) -> list:
        return sorted({r.get(key) for r in rows if isinstance(r, dict) and isinstance(r.get(key), int)})

    reps, warm = values("repeats"), values("warmup")
    if not reps:
        return ""
    span = lambda v: str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"  # noqa: E731
    return (f" · {span(warm) if warm else '?'} warm-up and {span(reps)} timed round{'s' * (reps[-1] > 1)} per row"
            f"{' (medians)' if reps[-1] > 1 else ''}")


def render(doc: dict) -> str:
    """One markdown table (with its provenance line) for a result document; the GPU suite's SCA-Mask
    section (`sections.sca.rows`) as a second table, its paper section (`sections.paper`: RADAR's fp32, non-flash
    timing setting), its profile section (`sections.profile`) and its training section (`sections.train`) as the
    next ones (or the reason they were skipped)."""
    cuda = f", CUDA {doc['cuda']}" if doc.get("cuda") else ""
    head = (f"{doc.get('date', '?')} · {doc.get('device', '?')} · torch {doc.get('torch', '?')}{cuda} · "
            f"commit `{doc.get('commit') or 'unknown'}` · `{doc.get('command', '?')}`")
    if any(isinstance(r, dict) and r.get("attention") == "math" for r in doc["rows"]):
        head += " · SDPA on the math kernel (no flash)"
    head += _rounds(doc["rows"])
    if "suite" in doc and "wall_s" not in doc:  # the GPU suite writes wall_s last
        head += " · **incomplete: the suite did not finish (killed or out of time); what it measured is below**"
    lines = [head, ""]
    if doc["rows"]:
        lines += _train_table(doc["rows"]) if _is_train(doc) else _table(doc["rows"])
    for what, why in (doc.get("failures") or {}).items():  # a GPU suite's accel presets: "accel var-d30"
        lines += ["", f"{what}: failed ({why})".replace("|", "/")]
    for what, why in (doc.get("skipped") or {}).items():
        lines += ["", f"{what}: skipped ({why})".replace("|", "/")]
    for section, status in (doc.get("status") or {}).items():  # a section that failed as a whole
        if str(status).startswith("failed"):
            lines += ["", f"{section} section: {status}".replace("|", "/")]
    sca = (doc.get("sections") or {}).get("sca") or {}
    if sca.get("rows"):
        lines += ([""] if doc["rows"] else []) + ["SCA-Mask section:", ""] + _table(sca["rows"])
    for preset, why in (sca.get("failures") or {}).items():
        lines += ["", f"SCA-Mask section, {preset}: failed: {why}".replace("|", "/")]
    for preset, why in (sca.get("skipped") or {}).items():
        lines += ["", f"SCA-Mask section, {preset}: skipped ({why})".replace("|", "/")]
    paper = (doc.get("sections") or {}).get("paper") or {}
    if paper.get("rows"):
        lines += ["", "RADAR's timing setting (fp32, SDPA on the math kernel):", ""] + _table(paper["rows"])
    elif paper.get("skipped"):
        lines += ["", f"RADAR's timing setting: skipped ({paper['skipped']})".replace("|", "/")]
    lines += _profile_tables((doc.get("sections") or {}).get("profile") or {})
    train = (doc.get("sections") or {}).get("train") or {}
    if train.get("rows"):
        lines += ["", "Training section:", ""] + _train_table(train["rows"])
    elif train.get("skipped"):
        lines += ["", f"Training section: skipped ({train['skipped']})".replace("|", "/")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))  # (a section after a file without rows)


def _profile_tables(profile: dict, ops_per_method: int = 8) -> list[str]:
    """The GPU suite's profile section (radar_train.bench.scales): per preset, each scale's milliseconds per
    method, the operators with the most device time per method, the kernels per scale (vanilla's every scale, a
    method's those it changes; blocks against the rest), and the decode per activation layout."""
    out: list[str] = []
    for preset in dict.fromkeys(r["preset"] for r in profile.get("scales", [])):
        rows = [r for r in profile["scales"] if r["preset"] == preset]
        pns = rows[0]["patch_nums"]
        out += ["", f"Profile, {preset}, batch {profile.get('batch_size', '?')}: milliseconds per sampling call, "
                    "by scale (CUDA events between the scales, else wall time; medians of 3 calls):", "",
                "| method | engine | start | " + " | ".join(f"{pn}×{pn}" for pn in pns) + " | total |",
                "| --- | --- |" + " ---: |" * (len(pns) + 2)]
        for r in rows:
            cells = [_num(r["start_ms"], ".2f")] + [_num(ms, ".2f") for ms in r["scale_ms"]] + [_num(r["total_ms"], ".1f")]
            out.append(f"| {r['method']} | {r['engine']} | " + " | ".join(cells) + " |")
        ops = [r for r in profile.get("ops", []) if r["preset"] == preset]
        if ops:
            out += ["", f"Profile, {preset}: the operators with the most device time in one eager call "
                        f"(self time; {ops_per_method} per method):", "", "| method | operator | ms | calls |",
                    "| --- | --- | ---: | ---: |"]
            for method in dict.fromkeys(r["method"] for r in ops):
                for r in [o for o in ops if o["method"] == method][:ops_per_method]:
                    out.append(f"| {method} | `{r['op']}` | {r['ms']:.2f} | {r['calls']} |")
        kernels = [r for r in profile.get("kernels", []) if r["preset"] == preset]
        if kernels:
            out += ["", f"Profile, {preset}: each scale's device kernels in one eager call (vanilla's every scale, a "
                        "method's those it changes), the transformer blocks against the rest of the scale (embedding, "
                        "head, guidance, token draw, f_hat update): count and summed kernel time (ms, no gaps):", "",
                    "| method | scale | blocks: kernels | blocks: ms | rest: kernels | rest: ms |",
                    "| --- | --- | ---: | ---: | ---: | ---: |"]
            out += [f"| {r['method']} | {r['pn']}×{r['pn']} | {r['blocks_kernels']} | {r['blocks_kernel_ms']:.2f} | "
                    f"{r['rest_kernels']} | {r['rest_kernel_ms']:.2f} |" for r in kernels]
    decode = profile.get("decode") or []
    if decode:
        out += ["", "Profile: the VQ-VAE decode by activation layout (`Decoder.channels_last`):", "",
                "| preset | batch | layout | images/s | ms |", "| --- | ---: | --- | ---: | ---: |"]
        out += [f"| {r['preset']} | {r['batch_size']} | {r['layout']} | {_ips(r['images_per_s'])} | {r['ms']:.1f} |"
                for r in decode]
    for preset, why in (profile.get("failures") or {}).items():
        out += ["", f"Profile, {preset}: failed: {why}".replace("|", "/")]
    for preset, why in (profile.get("skipped") or {}).items():
        out += ["", f"Profile, {preset}: skipped ({why})".replace("|", "/")]
    return out


def _train_table(rows: list) -> list[str]:
    """The GPU suite's training rows (radar_train.train.bench): what each compares, its ratio and target."""
    from radar_train.train.bench import row_detail

    out = ["| benchmark | preset | batch | precision | ratio | target | measured |", "| --- | --- | ---: | --- | ---: | --- | --- |"]
    for r in rows:
        out.append(f"| {r['name']} | {r.get('preset', '-')} | {r.get('batch_size', '-')} | {r.get('precision', '-')} | "
                   f"{r['ratio']:.3f} | {r.get('target', '-')} | {row_detail(r)} |".replace("\n", " "))
    return out


TARGETS = (  # (what, method, row key, ">=" or "<=", bound): the GPU sampling targets (docs/benchmarks.md)
    ("our vanilla vs the official sampler, loop", "vanilla", "vs_official", ">=", 1.3),
    ("our vanilla vs the official sampler, end to end", "vanilla", "vs_official_e2e", ">=", 1.2),
    ("FastVAR default vs our vanilla", "fastvar:default", "speedup_vs_vanilla", ">=", 1.25),
    ("StageVAR default vs our vanilla", "stagevar:default", "speedup_vs_vanilla", ">=", 1.8),
    ("forked pair vs the two runs separately (the worst pair)", "pair:", "pair_vs_separate", "<=", 0.80),
    ("our VQ-VAE decode vs the official", "decode", "vs_official", ">=", 1.0),
)
TARGET_PRESETS = ("var-d16", "var-d24")
"""The presets the targets name; the others' numbers are shown without a mark."""


def render_targets(doc: dict) -> str:
    """The sampling rows of a result file against TARGETS: one column per preset (the presets in TARGET_PRESETS
    always), the numbers of the default engine on the file's device (per preset: graphs where it has graphs rows,
    else eager, then marked "(eager)"; per-sample noise; the decode rows are engine-free), ✓ / ✗ for the presets
    in TARGET_PRESETS. A target whose rows are missing there is "not measured" (✗); a pair target with a skipped
    pair row is "skipped" (its worst pair is unknown). ValueError for a file without sampling rows."""
    if _is_train(doc):
        raise ValueError("a training result (radar-bench train): the targets view needs the accel rows")
    every = [r for r in doc.get("rows") or [] if isinstance(r, dict) and r.get("preset")]
    if not every:
        raise ValueError("no sampling rows (a file of other sections only): the targets view needs the accel rows")
    presets = list(dict.fromkeys([*TARGET_PRESETS, *(str(r["preset"]) for r in every)]))

    def engine_of(preset: str) -> str:
        return "graphs" if any(r["preset"] == preset and r.get("engine") == "graphs" for r in every) else "eager"

    def matching(preset: str, method: str) -> list:
        return [r for r in every if r["preset"] == preset
                and (r["method"].startswith(method) if method.endswith(":") else r["method"] == method)
                and (method == "decode" or (r.get("engine") == engine_of(preset)
                                            and r.get("noise") in (None, "per_sample")))]

    head = (f"{doc.get('date', '?')} · {doc.get('device', '?')} · commit `{doc.get('commit') or 'unknown'}` · "
            f"engine `graphs` where a preset has it, else `eager` · `{doc.get('command', '?')}`")
    lines = [head, "", "| target | bound | " + " | ".join(presets) + " |", "| --- | --- |" + " ---: |" * len(presets)]
    for what, method, key, op, bound in TARGETS:
        cells = []
        for preset in presets:
            rows = matching(preset, method)
            found = [r[key] for r in rows if not r.get("skipped") and r.get(key) is not None]
            target = preset in TARGET_PRESETS
            if method.endswith(":") and any(r.get("skipped") for r in rows):
                cells.append("skipped" + " ✗" * target)
                continue
            if not found:
                cells.append("not measured ✗" if target else "-")
                continue
            v = max(found) if op == "<=" else min(found)
            mark = "" if not target else (" ✓" if (v >= bound if op == ">=" else v <= bound) else " ✗")
            digits = 3 if key == "pair_vs_separate" or method == "decode" else 2  # (a decode near 1.00×)
            eager = " (eager)" if method != "decode" and engine_of(preset) == "eager" else ""
            cells.append(f"{v:.{digits}f}" + "×" * (key != "pair_vs_separate") + eager + mark)
        lines.append(f"| {what} | {op.replace('>=', '≥').replace('<=', '≤')} {bound:g}"
                     f"{'' if key == 'pair_vs_separate' else '×'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


VIEWS = {"": render, "targets": render_targets}
"""What a block's NAME may end with after '#' (none: the full table)."""


def fill(markdown: str, docs: dict[str, dict], source: str) -> tuple[str, int]:
    """`markdown` with every table block refilled; (new text, number of blocks)."""
    blocks = list(_BLOCK.finditer(markdown))
    starts = re.findall(r"<!-- table:([^ ]+?) -->", markdown)
    if not starts:
        raise ValueError(f"{source}: no <!-- table:NAME --> ... <!-- /table:NAME --> blocks")
    if len(starts) != len(blocks):
        closed = {m.group("name") for m in blocks}
        raise ValueError(f"{source}: <!-- table:{next(n for n in starts if n not in closed)} --> has no "
                         f"matching <!-- /table:... --> line")
    views = [m.group("name") for m in blocks if m.group("name").partition("#")[2] not in VIEWS]
    if views:
        raise ValueError(f"{source}: table {views[0]}: no such view (after '#': "
                         f"{', '.join(v for v in VIEWS if v)})")
    base = lambda name: name.partition("#")[0]  # noqa: E731
    unknown = [m.group("name") for m in blocks if base(m.group("name")) not in docs]
    if unknown:
        have = sorted(n for n, d in docs.items() if d is not None)
        raise ValueError(f"{source}: no result file for table(s) {', '.join(unknown)} "
                         f"(have: {', '.join(have) or 'none'})")
    other = [base(m.group("name")) for m in blocks if docs[base(m.group("name"))] is None]
    if other:
        raise ValueError(f"{source}: {', '.join(n + '.json' for n in other)}: not a benchmark result "
                         f"(needs an object with a 'rows' list, each row with 'method' and 'images_per_s', or "
                         f"radar-bench train's, each with 'name' and 'ratio')")
    rendered = {}
    for name in dict.fromkeys(m.group("name") for m in blocks):
        try:
            rendered[name] = VIEWS[name.partition("#")[2]](docs[base(name)])
        except ValueError as e:
            raise ValueError(f"{source}: table {name}: {e}") from None
        except _MALFORMED as e:
            raise ValueError(_malformed(docs, base(name), e)) from None

    def block(m: re.Match) -> str:  # (in the line ends of the block's own first line: a CRLF file stays CRLF)
        eol = "\r\n" if m.group(1).endswith("\r\n") else "\n"
        return m.group(1) + (rendered[m.group("name")] + "\n").replace("\n", eol) + m.group(4)

    return _BLOCK.sub(block, markdown), len(blocks)


def _malformed(docs: dict[str, dict], name: str, error: Exception) -> str:
    """The line for a result file a field of the wrong kind made unreadable (files are written by the benchmarks,
    never by hand, yet a hand-edited one gave a traceback)."""
    real = next(n for n, d in docs.items() if d is docs[name])  # (a `latest` alias: the file it stands for)
    return f"{real}.json: a field of the wrong kind ({type(error).__name__}: {error}): not a result file as the " \
           f"benchmarks write them"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m radar_train.bench.tables", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="benchmarks", help="folder of the result files (default: benchmarks)")
    ap.add_argument("--write", metavar="FILE.md", help="fill the <!-- table:NAME --> blocks of this markdown file")
    ap.add_argument("--check", action="store_true", help="with --write: change nothing, exit 1 if a block is out of date")
    a = ap.parse_args(argv)
    try:
        docs = load_results(Path(a.root))
        if a.write is None:
            if a.check:
                raise ValueError("--check needs --write FILE.md")
            shown = set()
            for name, doc in docs.items():
                if doc is not None and id(doc) not in shown:  # a `latest` alias repeats a file already shown
                    shown.add(id(doc))
                    try:
                        table = render(doc)
                    except _MALFORMED as e:
                        raise ValueError(_malformed(docs, name, e)) from None
                    print(f"### {name}\n\n{table}\n")
            return 0
        target = Path(a.write)
        if not target.is_file():
            raise FileNotFoundError(f"--write {a.write}: no such file")
        try:
            with open(target, encoding="utf-8", newline="") as f:  # (its line ends as they are)
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"--write {a.write}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        new, n = fill(text, docs, a.write)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{a.write}: {n} table(s) up to date")
        return 0
    if a.check:
        print(f"{a.write}: tables out of date; run python -m radar_train.bench.tables --write {a.write}")
        return 1
    with open(target, "w", encoding="utf-8", newline="") as f:
        f.write(new)
    print(f"{a.write}: {n} table(s) written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
