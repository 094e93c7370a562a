"""Every YAML under configs/ (searched recursively) parses against its entry point."""
from pathlib import Path

import pytest
from jsonargparse import ActionConfigFile, ArgumentParser

ROOT = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((ROOT / "generate").rglob("*.yaml")), ids=lambda p: p.name)
def test_generate_configs_parse(path):
    from radar_train.cli.generate import generate

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(generate)
    cfg = parser.parse_args(["--config", str(path)])
    assert cfg.model.preset and cfg.accel.method in ("none", "fastvar", "stagevar")
    assert path.read_text().startswith("# radar-generate --config configs/generate/" + path.name)


def test_every_config_folder_is_covered():
    """configs/<stage>/ folders each have a parse test (cache and train in their own test packages)."""
    assert {p.name for p in ROOT.iterdir() if p.is_dir()} == {"cache", "train", "generate"}
