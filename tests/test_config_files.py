"""Config files as the entry points read them (radar_train.cli.common): an empty or comment-only config file
sets nothing, wherever it is given; the group check reads every shipped config without complaint; a list given
after a config is merged entry by entry only when it has as many entries (docs/cli.md). The bad config files
themselves are cases of tests/test_bad_input.py."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
from pathlib import Path
from unittest import mock

import pytest
from cli_checks import call_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_CACHE = str(CONFIGS / "cache" / "tiny.yaml")
TINY_TRAIN = str(CONFIGS / "train" / "tiny.yaml")


def printed_config(cli: str, argv: list[str], cwd: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code, err = call_cli(cli, [*argv, "--print_config"], cwd)
    assert code == 0, err
    return out.getvalue()


@pytest.mark.parametrize("text", ["", "# nothing set here\n", "\n\n"], ids=["empty", "comments", "blank-lines"])
@pytest.mark.parametrize("cli,before,option", [
    ("cache", ["run", "--config", TINY_CACHE], "--config"),
    ("train", ["fit", "--config", TINY_TRAIN], "-c"),
    ("generate", ["--config", str(CONFIGS / "generate" / "tiny.yaml")], "--config"),
    ("generate", ["--config", str(CONFIGS / "generate" / "tiny.yaml")], "--model"),  # a group file
], ids=["cache-run", "fit-after-c", "generate", "generate-model-file"])
def test_a_config_file_that_sets_nothing_changes_nothing(tmp_path, cli, before, option, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    assert printed_config(cli, [*before, option, str(empty)], tmp_path) == printed_config(cli, before, tmp_path)


@functools.cache
def _parser(cli: str):
    """The root parser of an entry point (radar-train's LightningCLI one, built as `radar-train fit`)."""
    from jsonargparse import CLI, capture_parser

    if cli == "cache":
        from radar_train.cli.cache import build_parser

        return build_parser()
    if cli == "train":
        from radar_train.cli.train import run_lightning

        with mock.patch.object(sys, "argv", ["radar-train", "fit"]):  # its own argv: LightningCLI does not warn
            return capture_parser(lambda: run_lightning(["fit"]))
    from radar_train.cli.generate import generate
    from radar_train.cli.toy import train

    return capture_parser(lambda: CLI({"generate": generate, "toy": train}[cli], args=[]))


SHIPPED = [("cache", "run", p) for p in sorted((CONFIGS / "cache").rglob("*.yaml"))] + \
          [("train", "fit", p) for p in sorted((CONFIGS / "train").rglob("*.yaml"))] + \
          [("generate", None, p) for p in sorted((CONFIGS / "generate").rglob("*.yaml"))] + \
          [("toy", None, p) for p in sorted((CONFIGS / "toy").rglob("*.yaml"))]


@pytest.mark.parametrize("cli,sub,path", SHIPPED, ids=[f"{c}-{p.name}" for c, _, p in SHIPPED])
def test_every_shipped_config_passes_the_group_check_unchanged(cli, sub, path):
    from radar_train.cli.common import check_parser_args

    parser = _parser(cli)
    argv = [*([sub] if sub else []), "--config", str(path)]
    assert check_parser_args(parser, argv) == argv


def test_group_files_and_sections_are_checked_against_their_subcommand(tmp_path):
    """A file given to a group option is checked under the group's key; a root-level file's subcommand
    section (`fit:`) against that subcommand's groups; a group given as a file name inside a config is read
    from beside that config."""
    from radar_train.cli.common import check_parser_args
    from radar_train.inputs import InputError

    parser = _parser("train")
    (tmp_path / "lora.yaml").write_text("lora: [1]\n")
    (tmp_path / "root.yaml").write_text("fit: {model: {optim: 3}}\n")
    (tmp_path / "refers.yaml").write_text("model: lora.yaml\n")
    for argv, needles in [(["fit", "--model", str(tmp_path / "lora.yaml")], ["lora.yaml: model.lora must be"]),
                          (["--config", str(tmp_path / "root.yaml"), "fit"], ["root.yaml: model.optim must be"]),
                          (["fit", "-c", str(tmp_path / "refers.yaml")], ["lora.yaml: model.lora must be"])]:
        with pytest.raises(InputError) as e:
            check_parser_args(parser, argv)
        assert all(n in str(e.value) for n in needles), (argv, str(e.value))


def test_a_list_after_a_config_is_merged_entry_by_entry_only_at_the_same_length():
    """docs/cli.md: `--data.caches` over configs/train/tiny.yaml (one entry: path cache/tiny, train_shards
    0-3, val_shards "4"). One entry: merged with the file's (fields left out keep its values). Two entries:
    the file's list is replaced, and each field left out takes the dataclass default (null / zarr)."""
    parser = _parser("train")

    def caches(value: list[dict]) -> list[dict]:
        cfg = parser.parse_args(["fit", "--config", TINY_TRAIN, "--data.caches", json.dumps(value)])
        return [dict(c) for c in cfg.fit.data.caches]

    assert caches([{"path": "cache/a"}]) == [
        {"path": "cache/a", "train_shards": "0-3", "val_shards": "4", "format": "zarr"}]
    assert caches([{"path": "cache/a"}, {"path": "cache/b", "val_shards": "1"}]) == [
        {"path": "cache/a", "train_shards": None, "val_shards": None, "format": "zarr"},
        {"path": "cache/b", "train_shards": None, "val_shards": "1", "format": "zarr"}]


def test_a_check_that_fails_on_other_parser_internals_leaves_the_parsing_as_it_was(tmp_path, monkeypatch):
    """The group check reads jsonargparse's parser internals; where they differ (another release) the check is
    skipped and the command parses as it would without it, rather than failing every entry point."""
    import radar_train.cli.common as common

    expected = printed_config("cache", ["run", "--config", TINY_CACHE], tmp_path)

    def broken(parser, argv):
        raise AttributeError("'ArgumentParser' object has no attribute '_subcommands_action'")

    monkeypatch.setattr(common, "check_parser_args", broken)
    assert printed_config("cache", ["run", "--config", TINY_CACHE], tmp_path) == expected


def test_another_commands_config_file_is_one_line_naming_the_file_and_a_key(tmp_path):
    """A file whose top-level keys the command does not take (another command's config, a calibration file):
    jsonargparse's own message ('Key must be a string, got: 6.') named neither; a key of a group stays the
    group's check (and jsonargparse's)."""
    from radar_train.cli.common import check_parser_args
    from radar_train.inputs import InputError

    (tmp_path / "ranks.yaml").write_text("written_by: radar-accel calibrate\nratios: {6: [0.5, 0.5]}\n")
    with pytest.raises(InputError, match=r"ranks.yaml: 'written_by' is not an option of this command"):
        check_parser_args(_parser("cache"), ["run", "--config", str(tmp_path / "ranks.yaml")])
    with pytest.raises(InputError, match=r"tiny.yaml: 'seed_everything' is not an option of this command"):
        check_parser_args(_parser("cache"), ["run", "--config", TINY_TRAIN])


@pytest.mark.parametrize("text,bad", [
    ("plan:\n  image_per_class: 8\n", "'plan.image_per_class'"),
    ("sampling:\n  topk: 5\n", "'sampling.topk'"),
    ("accel:\n  fastvar:\n    prun: {6: 0.5}\n", "'accel.fastvar.prun'"),
])
def test_a_misspelt_key_inside_a_group_names_the_file_among_several(tmp_path, text, bad):
    """jsonargparse's line ('Group 'sampling' does not accept option 'topk'') named no file: with two config files
    one could not tell which held it."""
    (tmp_path / "mine.yaml").write_text(text)
    code, err = call_cli("cache", ["run", "--config", TINY_CACHE, "--config", "mine.yaml", "--check"], tmp_path)
    assert code == 2 and err.strip() == f"error: mine.yaml: {bad} is not an option of this command (`--help` lists " \
                                        f"the options)", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]


def test_a_config_file_named_by_a_config_file_gets_the_same_checks(tmp_path):
    """jsonargparse follows `config: OTHER.yaml` inside a config file; the checks read only the files of the command
    line, so a group that was a number in OTHER was a 27-line traceback (exit 1)."""
    (tmp_path / "inner.yaml").write_text("plan: 5\n")
    (tmp_path / "outer.yaml").write_text("config: inner.yaml\n")
    code, err = call_cli("cache", ["run", "--config", "outer.yaml", "--check"], tmp_path)
    assert code == 2 and err.strip() == "error: inner.yaml: plan must be a mapping (of the --plan.* options), found " \
                                        "an int: 5", err
    (tmp_path / "outer.yaml").write_text("config: nowhere.yaml\n")
    code, err = call_cli("cache", ["run", "--config", "outer.yaml", "--check"], tmp_path)
    assert code == 2 and "outer.yaml: config: 'nowhere.yaml' is not a config file beside it" in err, err
    (tmp_path / "inner.yaml").write_text(f"output: {tmp_path / 'c'}\n")
    (tmp_path / "outer.yaml").write_text("config: inner.yaml\nplan: {num_samples: 4}\n")
    assert "num_samples: 4" in printed_config("cache", ["run", "--config", TINY_CACHE, "--config", "outer.yaml"],
                                              tmp_path)


@pytest.mark.parametrize("value,read_as", [("1:5", 65), ("010", 8), ("1:00:00", 3600), ("-07", -7)])
def test_a_number_yaml_reads_otherwise_than_written_is_refused_naming_it(tmp_path, value, read_as):
    """YAML 1.1 reads `val_shards: 1:5` as shard 65 (base 60) and `base_seed: 010` as 8 (octal), where the same text
    on the command line is the range or 10: a config file made other pairs, or held out another shard, unsaid."""
    (tmp_path / "mine.yaml").write_text(f"plan:\n  base_seed: {value}\n")
    code, err = call_cli("cache", ["run", "--config", TINY_CACHE, "--config", "mine.yaml", "--check"], tmp_path)
    assert code == 2, err
    assert f"error: mine.yaml: config file: {value} (line 2) reads in YAML as the number {read_as}, not as written: " \
           f"quote it ('{value}')" in err
    (tmp_path / "mine.yaml").write_text(f"plan:\n  base_seed: 10\n  classes: '{value}'\n")  # quoted: text, as typed
    from radar_train.inputs import read_yaml

    assert read_yaml(tmp_path / "mine.yaml")["plan"] == {"base_seed": 10, "classes": value}


@contextlib.contextmanager
def _within(seconds: int):
    """The block must end within `seconds` (an open() of a pipe no one writes waits for ever): TimeoutError."""
    import signal

    def late(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("cli,before,option", [
    ("generate", ["--output", "o"], "--config"),
    ("train", ["fit"], "-c"),
    ("cache", ["run", "--check"], "--config"),
], ids=["generate", "fit-c", "cache-run"])
def test_a_config_file_that_is_a_pipe_is_one_line_and_not_a_run_on_the_defaults(tmp_path, cli, before, option):
    """`--config <(...)` (a pipe of the shell's: /dev/fd/N): the check read it, the parser found it empty and the
    command ran on its defaults (top_k 900 for the file's 64, outputs/generate for its folder), exit 0. A named pipe
    no one writes hung the command."""
    import os

    from cli_checks import assert_one_line_error

    read, write = os.pipe()
    os.write(write, Path(TINY_CACHE if cli == "cache" else TINY_TRAIN if cli == "train" else
                         CONFIGS / "generate" / "tiny.yaml").read_bytes())
    os.close(write)
    try:
        with _within(60):
            code, err = call_cli(cli, [*before, option, f"/dev/fd/{read}"], tmp_path)
    finally:
        os.close(read)
    assert code == 2
    assert_one_line_error(err, f"/dev/fd/{read}: config file ({option}) is a pipe", f'{option} "$(cat FILE)"')
    os.mkfifo(tmp_path / "fifo.yaml")
    with _within(60):
        code, err = call_cli(cli, [*before, option, "fifo.yaml"], tmp_path)
    assert code == 2
    assert_one_line_error(err, f"fifo.yaml: config file ({option}) is a pipe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.yaml"]


def test_a_group_file_or_a_checkpoint_that_is_a_pipe_is_one_line_not_a_hang(tmp_path):
    import os

    from cli_checks import assert_one_line_error

    os.mkfifo(tmp_path / "fifo")
    with _within(60):
        code, err = call_cli("generate", ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--model", "fifo",
                                          "--output", "o"], tmp_path)
    assert code == 2
    assert_one_line_error(err, "fifo: --model file is a pipe or a socket, expected a file")
    with _within(60):
        code, err = call_cli("train", ["export", "--ckpt", "fifo", "--output", "o"], tmp_path)
    assert code == 2
    assert_one_line_error(err, "fifo: radar-train checkpoint is a pipe or a socket, expected a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


@pytest.mark.parametrize("cli,argv,text,said", [
    ("cache", ["run", "--config", TINY_CACHE, "--output", "c", "--check"], "storage:\n  dtype: null\n",
     "storage.dtype: null is not a value of it (it takes Literal['float16', 'float32'])"),
    ("cache", ["run", "--config", TINY_CACHE, "--output", "c"], "batch_size: null\n",
     "batch_size: null is not a value of it (it takes int)"),
    ("train", ["fit", "--config", TINY_TRAIN, "--trainer.default_root_dir", "run"],
     "model:\n  output:\n    checkpoints: null\n",
     "model.output.checkpoints: null is not a value of it (it takes bool)"),
    ("train", ["fit", "--config", TINY_TRAIN, "--trainer.default_root_dir", "run", "--check"],
     "seed_everything: null\n", "seed_everything: null is not a value of it (it takes Union[bool, int])"),
], ids=["cache-dtype", "cache-batch-size", "fit-checkpoints", "fit-seed"])
def test_a_null_in_a_config_file_for_an_option_that_takes_none_is_one_line(tmp_path, cli, argv, text, said):
    """On the command line `--batch_size null` is refused; in a file jsonargparse checked null against no type: a
    traceback, a cache folder left with a manifest of dtype None, a run without checkpoints that exited 0."""
    (tmp_path / "mine.yaml").write_text(text)
    code, err = call_cli(cli, [*argv, "--config", "mine.yaml"], tmp_path)
    assert code == 2 and err.strip() == f"error: mine.yaml: {said}: leave the key out for its default", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]


def test_a_null_where_the_option_takes_none_is_still_none(tmp_path):
    (tmp_path / "mine.yaml").write_text("plan:\n  images_per_class: null\n  num_samples: 4\n")
    printed = printed_config("cache", ["run", "--config", TINY_CACHE, "--config", "mine.yaml"], tmp_path)
    assert "images_per_class: null" in printed and "num_samples: 4" in printed


@pytest.mark.parametrize("cli,argv,inline,said", [
    ("generate", ["--config", str(CONFIGS / "generate" / "tiny.yaml"), "--output", "g"], "model: [1, 2]",
     "model must be a mapping (of the --model.* options), found a list: [1, 2]"),
    ("cache", ["run", "--config", TINY_CACHE, "--output", "c"], "{plan: 5}",
     "plan must be a mapping (of the --plan.* options), found an int: 5"),
    ("train", ["fit", "--config", TINY_TRAIN], "{model: {lora: 5}}",
     "model.lora must be a mapping (of the --model.lora.* options), found an int: 5"),
    ("cache", ["run", "--config", TINY_CACHE, "--output", "c"], "{plan: {image_per_class: 8}}",
     "'plan.image_per_class' is not an option of this command"),
])
def test_yaml_given_inline_gets_the_checks_of_a_file(tmp_path, cli, argv, inline, said):
    """`--config "$(cat FILE)"` (the docs' way for YAML that is not a file) skipped the group checks: a 30-line
    traceback, or (radar-bench tradeoff `{setup: 5}`) a run on another model preset than the command's default."""
    code, err = call_cli(cli, [*argv, "--config", inline], tmp_path)
    assert code == 2 and err.strip().startswith(f"error: --config (YAML given inline): {said}"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text,key,lines", [
    ("model:\n  lora:\n    rank: 4\nmodel:\n  optim:\n    learning_rate: 0.01\n", "model", "1 and 4"),
    ("model: {lora: {rank: 4, rank: 8}}\n", "rank", "1 and 1"),
])
def test_a_key_given_twice_in_a_config_file_is_refused_naming_it(tmp_path, text, key, lines):
    """The second `model:` replaced the first without a word: its whole group (rank 4) was dropped."""
    (tmp_path / "dup.yaml").write_text(text)
    code, err = call_cli("train", ["fit", "--config", TINY_TRAIN, "--config", "dup.yaml", "--check"], tmp_path)
    assert code == 2 and err.strip() == (f"error: dup.yaml: config file: key {key!r} is given twice in one mapping "
                                         f"(lines {lines}): the second would replace the first without a word; give "
                                         f"it once"), err


def test_a_merge_key_then_a_key_it_merged_is_an_override_not_a_repeat(tmp_path):
    from radar_train.inputs import read_yaml

    (tmp_path / "anchors.yaml").write_text("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 5\n")
    assert read_yaml(tmp_path / "anchors.yaml")["mine"] == {"x": 1, "y": 5}


def test_a_group_file_named_in_a_config_file_and_not_beside_it_names_it_and_the_config(tmp_path):
    """The line named `--sampling`, never given, twice, and not the config file; a file of that name in the working
    folder (where jsonargparse does not look) was taken by the check and the parse then failed."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("sampling: s.yaml\n")
    (tmp_path / "s.yaml").write_text("cfg: 3.5\n")  # (in the working folder, not beside sub/c.yaml)
    code, err = call_cli("cache", ["run", "--config", TINY_CACHE, "--config", "sub/c.yaml", "--output", "c",
                                   "--check"], tmp_path)
    assert code == 2 and err.strip() == ("error: sub/s.yaml: sampling file (named in sub/c.yaml) not found: a file "
                                         "named in a config file is looked for beside it"), err
    (tmp_path / "sub" / "s.yaml").write_text("cfg: 3.5\n")
    assert "cfg: 3.5" in printed_config("cache", ["run", "--config", TINY_CACHE, "--config", "sub/c.yaml"], tmp_path)


@pytest.mark.parametrize("sub", ["status", "verify", "export-wds"])
def test_a_radar_cache_subcommand_without_config_calls_a_missing_config_an_unknown_option(tmp_path, sub):
    """They take no --config: a missing file was 'x.yaml: config file not found', an existing one an unknown
    option."""
    code, err = call_cli("cache", [sub, "somewhere", "--config", "x.yaml"], tmp_path)
    assert code == 2 and err.strip().startswith("error: unrecognized arguments: --config x.yaml"), err


def test_a_printed_config_with_a_required_option_null_is_taken_back_with_the_option_given_after_it(tmp_path):
    """--print_config prints a required option, or one without a default, as null (radar-eval's --cache, radar-train
    fit's --data.caches): the null check refused the printed file even with the option given after it."""
    (tmp_path / "eval.yaml").write_text(printed_config("eval", [], tmp_path))
    assert "cache: null" in (tmp_path / "eval.yaml").read_text()
    assert "cache: c" in printed_config("eval", ["--config", "eval.yaml", "--cache", "c"], tmp_path)
    (tmp_path / "fit.yaml").write_text(printed_config("train", ["fit"], tmp_path))
    code, err = call_cli("train", ["fit", "--config", "fit.yaml", "--data.caches", "[{path: c}]",
                                   "--trainer.default_root_dir", "run", "--check"], tmp_path)
    assert code == 0, err


def test_fit_checks_groups_given_as_files(tmp_path):
    """A group from a file carries jsonargparse's `__path__`: the option checks built LoraArgs(__path__=...), a
    TypeError traceback for `--model.lora FILE` and for `data: d.yaml` in a config."""
    (tmp_path / "lora.yaml").write_text("rank: 0\n")
    (tmp_path / "d.yaml").write_text("batch_size: 4\ncaches:\n  - path: c\n")
    (tmp_path / "with_data.yaml").write_text(f"config: {TINY_TRAIN}\ndata: d.yaml\n")
    base = ["fit", "--trainer.default_root_dir", "run", "--check"]
    code, err = call_cli("train", [*base, "--config", TINY_TRAIN, "--model.lora", "lora.yaml"], tmp_path)
    assert code == 2 and err.strip() == "error: invalid training config: model.lora.rank must be >= 1, got 0", err
    (tmp_path / "lora.yaml").write_text("rank: 4\n")
    code, err = call_cli("train", [*base, "--config", TINY_TRAIN, "--model.lora", "lora.yaml"], tmp_path)
    assert code == 0, err
    code, err = call_cli("train", [*base, "--config", "with_data.yaml"], tmp_path)
    assert code == 0, err
