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


def test_every_subcommands_summary_in_the_programs_help_is_a_whole_sentence():
    """The programs' --help lists each subcommand with the first line of its function's docstring: radar-accel's
    `show` was cut mid-sentence ("... its FLOP model (the share of")."""
    from radar_train.cli import accel, bench, toy

    functions = [accel.show, accel.calibrate, bench.accel, bench.pipeline, bench.cache, bench.train, bench.tradeoff,
                 toy.train, toy.measure, toy.masks, toy.combine]
    cut = {f"{f.__module__}.{f.__name__}": first for f in functions
           if not (first := f.__doc__.strip().splitlines()[0]).endswith((".", ")"))}
    assert cut == {}
