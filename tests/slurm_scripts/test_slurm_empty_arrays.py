"""The slurm/ scripts run under `set -u`; bash before 4.4 (RHEL/CentOS 7 ship 4.2) calls an empty array unbound
there, so every expansion of a whole array must be guarded: ${a[@]+"${a[@]}"} (or ${a[*]-} inside a string).
Bash 4.2 cannot be had here (BASH_COMPAT does not bring the old behaviour back), so the scripts are scanned."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[2] / "slurm"
SCRIPTS = sorted(p.name for p in SLURM.iterdir() if p.suffix in (".sh", ".sbatch"))
WHOLE_ARRAY = re.compile(r"\$\{(#?)([A-Za-z_][A-Za-z0-9_]*)\[([@*])\]([^}]*)\}")


def unguarded_expansions(text: str) -> list[str]:
    """The ${NAME[@]} / ${NAME[*]} expansions in TEXT that are not inside the guard ${NAME[@]+"${NAME[@]}"} (or
    ${NAME[*]+...} / ${NAME[*]-}). ${#NAME[@]} (a count) is safe, and so is BASH_SOURCE (never empty)."""
    bad = []
    for m in WHOLE_ARRAY.finditer(text):
        count, name, which, rest = m.groups()
        if count or name == "BASH_SOURCE" or rest in ("-", f'+"${{{name}[{which}]'):
            continue
        guard = f'${{{name}[{which}]+"'
        if text[:m.start()].endswith(guard) and text[m.end():].startswith('"}'):
            continue
        line = text.count("\n", 0, m.start()) + 1
        bad.append(f"line {line}: {m[0]}")
    return bad


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_unguarded_array_expansion(script):
    assert unguarded_expansions((SLURM / script).read_text()) == []


def test_the_gpu_run_script_guards_its_arrays_too():
    """benchmarks/run_gpu_suite.sh runs on a lent machine whose bash is not ours to choose (set -u as well):
    with NO_OFFICIAL=1 its official-code option list is empty."""
    assert unguarded_expansions((SLURM.parent / "benchmarks" / "run_gpu_suite.sh").read_text()) == []


def test_the_scan_finds_what_it_should():
    text = 'a=("${x[@]}" ${y[@]+"${y[@]}"} "${#z[@]}" "${w[*]}" "${v[*]-}" "${BASH_SOURCE[0]}")\necho "${u[@]}"\n'
    assert unguarded_expansions(text) == ['line 1: ${x[@]}', 'line 1: ${w[*]}', 'line 2: ${u[@]}']
