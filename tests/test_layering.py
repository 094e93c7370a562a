"""Layering: the model layer imports neither the toy world nor training / caches / LoRA libraries; the adapter
format (export/) does not import training; yet the toy preset resolves by name."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "radar_train"


def _imports(folder: str) -> dict[str, set[str]]:
    """{file: modules it imports (absolute; relative imports resolved)} for every .py under radar_train/<folder>."""
    out = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        pkg = ["radar_train", *path.relative_to(PACKAGE).parent.parts]
        mods = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = pkg[: len(pkg) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                mods |= {module} | {f"{module}.{a.name}" for a in node.names}  # `from radar_train import toyworld`
        out[str(path.relative_to(PACKAGE))] = mods
    return out


@pytest.mark.parametrize("folder,forbidden", [
    ("models", ("radar_train.toyworld", "radar_train.train", "radar_train.cache", "radar_train.export", "lightning",
                "peft")),
    ("export", ("radar_train.train", "lightning")),
    ("accel", ("radar_train.inference", "radar_train.train", "radar_train.cache", "radar_train.toyworld", "lightning",
               "peft")),
])
def test_a_layer_does_not_import_the_layers_above_it(folder, forbidden):
    found = {f: sorted(m for m in mods if m.startswith(forbidden)) for f, mods in _imports(folder).items()}
    assert {f: m for f, m in found.items() if m} == {}


def test_the_toy_preset_resolves_without_the_model_layer_importing_the_toy_world():
    code = ("import sys; from radar_train.models import get_preset; get_preset('tiny'); "
            "assert not [m for m in sys.modules if m.startswith('radar_train.toyworld')], 'imported early'; "
            "p = get_preset('toy'); assert p.name == 'toy' and 'radar_train.toyworld' in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
