"""Every YAML under configs/ (searched recursively) parses against its entry point."""
from pathlib import Path

import pytest
from jsonargparse import ActionConfigFile, ArgumentParser

ROOT = Path(__file__).resolve().parents[1] / "configs"


def _parser(entry_point) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(entry_point)
    return parser


@pytest.mark.parametrize("path", sorted((ROOT / "generate").rglob("*.yaml")), ids=lambda p: p.name)
def test_generate_configs_parse(path):
    from radar_train.cli.generate import generate

    cfg = _parser(generate).parse_args(["--config", str(path)])
    assert cfg.model.preset and cfg.accel.method in ("none", "fastvar", "stagevar")
    assert path.read_text().startswith("# radar-generate --config configs/generate/" + path.name)


@pytest.mark.parametrize("path", sorted((ROOT / "toy").rglob("*.yaml")), ids=lambda p: p.name)
def test_toy_recipe_configs_parse(path):
    from radar_train.cli.toy import train

    parser = _parser(train)
    cfg = parser.parse_args(["--config", str(path)])
    default = parser.parse_args([])
    assert cfg.recipe != default.recipe, "a recipe config that changes nothing"
    assert path.read_text().startswith("# radar-toy train --config configs/toy/" + path.name)


def test_every_config_folder_is_covered():
    """configs/<stage>/ folders each have a parse test (cache and train in their own test packages)."""
    assert {p.name for p in ROOT.iterdir() if p.is_dir()} == {"cache", "train", "generate", "toy"}


@pytest.mark.parametrize("cli,argv,field_doc", [
    ("cache", ["run", "--help"], "Samples per Zarr chunk inside a shard"),
    ("train", ["fit", "--help"], "Dropout on the LoRA branch input."),
])
def test_help_shows_the_config_fields_docstrings_and_only_help_reads_them(cli, argv, field_doc, capsys):
    """The dataclass fields' attribute docstrings are the options' help; jsonargparse reads them from source
    (slow for Lightning's Trainer), so only for --help: a command without --help afterwards does not."""
    from cli_checks import call_cli
    from jsonargparse._optionals import get_docstring_parse_options

    code, _ = call_cli(cli, argv, Path.cwd())
    assert code == 0
    assert field_doc in " ".join(capsys.readouterr().out.split())
    assert get_docstring_parse_options()["attribute_docstrings"]
    call_cli(cli, ["--no-such-option"], Path.cwd())
    assert not get_docstring_parse_options()["attribute_docstrings"]
