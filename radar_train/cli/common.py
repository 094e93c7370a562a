"""What every entry point shares: library deprecation noise filtered, `--config` files read behind the one
input error path, and every error the user can fix printed as one line (`error: ...` on stderr, exit 2).

    def main(argv=None):
        run_main("radar-eval", lambda args: CLI(evaluate, args=args, exit_on_error=False), argv)
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence, get_args

from radar_train.config import check_device, check_positive  # noqa: F401 - the entry points' checks, re-exported

# Errors the user can fix: every one carries a one-line message. InputError, OutputError, CheckpointError,
# the accel ConfigError and the reference FixtureError are ValueErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)

# Deprecation and future warnings raised inside the libraries (lightning, torch, jsonargparse, peft, zarr, ...)
# are about their own internals: a user of the command cannot act on them. Ours stay.
_LIBRARY_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Library messages that are only about how radar_train drives the library, never about the user's input.
_LIBRARY_NOISE = (
    r".*Checkpoint directory .* exists and is not empty",  # resuming into the run's own folder
    r".*isinstance\(treespec, LeafSpec\)",  # lightning's use of torch's pytree
    # on any machine with SLURM installed (a login node, CI), outside a job: our job scripts use srun
    r".*The `srun` command is available on your system but is not used",
    # under DDP, for the val/ metrics, which RadarLoraModule all-reduces itself before logging them
    # (and for the validation's loggers' step: the same on every rank)
    r".*It is recommended to use `self\.log\('(val/|step').*sync_dist=True",
    # radar-train fit --ckpt_path last before the run's first save: it says so itself (the hint, save_last=True, the
    # run has)
    r'.*\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint',
    # the validation loader of a WebDataset export, whose length counts each worker's tars (EvalStreamLoader)
    r".*Your `IterableDataset` has `__len__` defined",
)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


# a log record's attribute (`extra={HOLD: True}`) that has InfoHold hold a warning too: one about the set-up that a
# later check may still refuse (its error line then comes alone)
HOLD = "radar_hold_until_checked"


class InfoHold:
    """Holds the INFO lines a command logs while it sets up (Lightning's "GPU available", the seed, the LoRA
    summary) until its checks have passed: `release()` prints them then, in order; `end()` drops any still held,
    so that input a check refuses gets its one error line alone. Warnings and errors are never held, but for
    warnings logged with `extra={HOLD: True}`. Every handler of the root logger and of the loggers that have
    their own (Lightning's) is covered."""

    def __init__(self) -> None:
        self.held: list[tuple[logging.Handler, logging.LogRecord]] = []
        self.filters: list[tuple[logging.Handler, logging.Filter]] = []

    def start(self) -> "InfoHold":
        loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]
        for handler in {id(h): h for lg in loggers for h in lg.handlers}.values():
            hold = _Hold(self, handler)
            handler.addFilter(hold)
            self.filters.append((handler, hold))
        return self

    def _remove(self) -> None:
        for handler, hold in self.filters:
            handler.removeFilter(hold)
        self.filters = []

    def release(self) -> None:
        held, self.held = self.held, []
        self._remove()
        for handler, record in held:
            handler.handle(record)

    def end(self) -> None:
        self.held = []
        self._remove()


class _Hold(logging.Filter):
    def __init__(self, owner: InfoHold, handler: logging.Handler):
        super().__init__()
        self.owner, self.handler = owner, handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not getattr(record, HOLD, False):
            return True
        self.owner.held.append((self.handler, record))
        return False


def quiet_library_warnings() -> None:
    """Filter library deprecation noise for this process (only in entry points; never on import). Warnings
    a user can act on stay: our own (an adapter trained for another method, ...), Lightning's hints about
    the user's settings (log_every_n_steps, num_workers). Explicit -W / PYTHONWARNINGS options win."""
    if not sys.warnoptions:
        for category in _LIBRARY_CATEGORIES:
            warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=category, module=r"radar_train(\.|$)")
        for message in _LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=message)


_PACKAGE_DIR = os.path.join(str(Path(__file__).parents[1]), "")  # (as the code's file names spell it, not resolved)


def plain_own_warnings() -> None:
    """Our own warnings (an adapter trained for another method, ...) print as one line, `warning: <message>`, without
    Python's file:line prefix and the source line that raised it, which say nothing to a user of the command.
    Others' (Lightning's hints about the user's settings) keep Python's format. Only in entry points."""
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if str(filename).startswith(_PACKAGE_DIR):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    if not getattr(warnings.formatwarning, "_radar", False):
        formatwarning._radar = True
        warnings.formatwarning = formatwarning


class WarningPrefix(logging.Formatter):
    """`warning: <message>` for a WARNING record (the datamodule's shards left out of training, a resume's notes),
    as `plain_own_warnings` prints warnings.warn's; other records as the format says."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno != logging.WARNING:
            return super().format(record)
        text = record.getMessage()  # (the message alone, whatever the format gives other records)
        return text if text.startswith("warning:") else f"warning: {text}"


class RankZeroInfo(logging.Filter):
    """Lets records below WARNING through only on the process of global rank 0 (Lightning's
    `rank_zero_only.rank`, set from the launcher's environment and by the strategy), so that a run on N
    devices says its INFO lines once instead of N times; warnings and errors pass on every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0


def reopen_closed_streams(logger: logging.Logger) -> None:
    """Points the logger's stream handlers whose stream has been closed at the current sys.stderr.
    Lightning binds its handler to the sys.stderr of the moment it is first imported; a host that swaps
    and closes sys.stderr afterwards (a notebook cell's capture, pytest's capsys) would leave every later
    line to fail with a "--- Logging error ---" traceback. Handlers on open streams are left as they are."""
    for handler in logger.handlers:
        plain = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        stream = getattr(handler, "stream", None) if plain else None
        if stream is not None and getattr(stream, "closed", False):
            with handler.lock:  # not setStream: it flushes the old stream, which raises once it is closed
                handler.stream = sys.stderr


def utf8_mode_or_reexec() -> None:
    """Run the command in Python's UTF-8 mode: where the locale's codec is not UTF-8 (a Latin-1 locale, or LANG=C
    with Python's coercion off), files were read in that codec (jsonargparse's --config: a shipped config with
    an α, a run's own config.yaml naming a cache path with a ç, could not be read, so a run could not be
    resumed), and non-ASCII paths on the command line reached TensorBoard as undecodable text. The process
    replaces itself (same pid, same arguments) with PYTHONUTF8=1, which its child processes inherit."""
    if sys.flags.utf8_mode or os.name != "posix" or os.environ.get("PYTHONUTF8") == "1":
        return
    import locale

    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    os.environ["PYTHONUTF8"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def tolerant_streams() -> None:
    """stdout and stderr that print every character: where the locale's codec lacks one (a Latin-1 locale, or
    LANG=C without Python's UTF-8 mode) a help text's α or a report's − raised UnicodeEncodeError (no --help,
    and a radar-eval that had measured everything ended in an error line). Such a character is printed as
    its escape (\\u03b1) instead; a UTF-8 stream is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # (a closed or detached stream)
                pass


def tidy_lightning_logging() -> None:
    """Lightning's log lines once (its own handler; not again through the root logger), on an open stream,
    without the two it logs at INFO that are not about the user's run: an advertisement, and the note
    that the run's checkpoint callback (attached early so that --ckpt_path last finds last.ckpt) is
    attached again."""
    import lightning  # noqa: F401 - sets up the "lightning" logger and its handler

    logger = logging.getLogger("lightning")
    logger.propagate = False
    reopen_closed_streams(logger)
    noise = _DropMessages("Tip: For seamless cloud logging", "will override existing callbacks passed to Trainer")
    for handler in logger.handlers:
        if not any(isinstance(f, _DropMessages) for f in handler.filters):
            handler.addFilter(noise)


def one_line(text: object) -> str:
    """`text` as one line: its lines joined with "; " (with " " after a line ending in ":"; blank ones dropped)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return type(text).__name__
    out = lines[0]
    for ln in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + ln
    return out


def _parse_error(e: BaseException) -> str:
    """A jsonargparse error as one line, options spelt as on the command line ('--data.batch_size'), a value that
    fits none of an option's types said in a few words (`_union_message`)."""
    return _yaml_colon_hint(_union_message(re.sub(r'Parser key "([^"]+)"', r"--\1", one_line(e))))


_KEY_WITHOUT_SPACE = re.compile(r"Option '([A-Za-z_]\w*):([^' ][^']*)' is not accepted")


def _yaml_colon_hint(text: str) -> str:
    """A YAML mapping typed without the space after a colon (`[{path:c1}]`) reads as the key `path:c1` with no value:
    jsonargparse's "Option 'path:c1' is not accepted" gets the hint to write `path: c1`."""
    found = _KEY_WITHOUT_SPACE.search(text)
    if found is None:
        return text
    key, value = found.groups()
    return f"{text} (YAML reads {key}:{value} as one word: write a space after the colon, {key}: {value})"


_NUMBERS_WITHOUT_SPACE = re.compile(r"(?<![\w.:])(\d+):(\d[\d.]*)(?![\w:])")
_NUMBER_KEY_WITHOUT_SPACE = re.compile(r"[{,]\s*(\d+):(\d[\d.]*)(?![\w:])")  # (in a key's place: a mapping meant)


def _base60_hint(text: str, argv: Sequence[str]) -> str:
    """A mapping of numbers typed without the space after a colon (`--accel.fastvar.prune '{6:1.5}'`) reads in YAML as
    one base-60 number with no value ({361.5: null}), which jsonargparse reports in words that do not say so (a
    TypeError's text): the error about that option gets the hint to write `6: 1.5`."""
    found = re.match(r"(--[\w.-]+):", text)
    if found is None:
        return text
    for i in range(len(argv)):
        given = _option_value(argv, i, [found[1]])
        # (a number the strict loader already named, `val_shards: 1:5`, gets the hint only in a key's place)
        pattern = _NUMBER_KEY_WITHOUT_SPACE if "reads in YAML as the number" in text else _NUMBERS_WITHOUT_SPACE
        numbers = given and "{" in given[1] and pattern.search(given[1])
        if numbers:
            a, b = numbers.groups()
            return f"{text} (YAML reads {a}:{b} as one base-60 number: write a space after the colon, {a}: {b})"
    return text


_UNION = re.compile(r"Does not validate against any of the Union subtypes; Subtypes: \[(?P<types>.*?)\]; "
                    r"Errors: (?P<errors>.*?); Given value type: <class '[^']+'>; Given value: (?P<value>.*)$")
_NOT_OF_TYPE = re.compile(r"Expected a <class '[^']+'>\.?")


def _union_message(text: str) -> str:
    """jsonargparse's "Does not validate against any of the Union subtypes; Subtypes: [dict[int, float], <class
    'NoneType'>]; Errors: - Expected a <class 'dict'>; - Expected a <class 'NoneType'>; Given value type: <class
    'list'>; Given value: [[8, 0.5]]" as "expected dict[int, float] or null, got [[8, 0.5]]", keeping what an error
    says beyond "not of this type" (a dict key that is not an int) in brackets. Other text is returned as it is."""
    found = _UNION.search(text)
    if found is None:
        return text
    types, depth, start = [], 0, 0
    spelt = found["types"]
    for i, ch in enumerate(spelt + ","):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            types.append(spelt[start:i].strip())
            start = i + 1
    names = [re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", t).replace("NoneType", "null") for t in types]
    details = [d.strip() for d in re.split(r"(?:^|; )- ", found["errors"]) if d.strip()]
    details = [d for d in details if not _NOT_OF_TYPE.fullmatch(d)]
    said = f"expected {' or '.join(names)}, got {found['value']}" + (f" ({'; '.join(details)})" if details else "")
    return text[:found.start()] + said


# The config-file options of the entry points (radar-train's LightningCLI also has the short `-c`).
CONFIG_OPTIONS = ("--config", "-c")


def _option_value(argv: Sequence[str], i: int, options: Sequence[str]) -> Optional[tuple[str, str, int]]:
    """(option, value, tokens taken) if argv[i] gives one of `options` a value: `OPT VALUE`, `OPT=VALUE`,
    or a short option's `-cVALUE`; None otherwise."""
    a = argv[i]
    for opt in options:
        if a == opt and i + 1 < len(argv):
            return opt, argv[i + 1], 2
        if a.startswith(opt + "="):
            return opt, a[len(opt) + 1:], 1
        if len(opt) == 2 and opt[0] == "-" and a.startswith(opt) and len(a) > 2 and not a.startswith("--"):
            return opt, a[2:], 1
    return None


def _config_values(argv: Sequence[str], options: Sequence[str] = CONFIG_OPTIONS) -> list[tuple[str, str]]:
    """(option, value) of every config-file option in argv: `--config FILE`, `--config=FILE`, `-c FILE`."""
    out, i = [], 0
    while i < len(argv):
        found = _option_value(argv, i, options)
        if found is None:
            i += 1
        else:
            out.append(found[:2])
            i += found[2]
    return out


# Boolean options that may be given bare (`--overwrite`), as a flag, besides `--overwrite true|false`.
FLAGS = ("--overwrite", "--allow_train_shards")


def expand_flags(argv: Sequence[str]) -> list[str]:
    """A bare flag of FLAGS (last, or followed by another option) becomes `--flag=true`."""
    out = []
    for i, a in enumerate(argv):
        bare = a in FLAGS and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        out.append(f"{a}=true" if bare else a)
    return out


def _flags_as_given(text: str, argv: Sequence[str]) -> str:
    """An error quoting a bare flag as expand_flags made it (`--overwrite=true`, to a command without the option)
    quotes it as typed, where the command line holds it bare and not so spelt."""
    for flag in FLAGS:
        if flag in argv and f"{flag}=true" not in argv:
            text = re.sub(rf"{re.escape(flag)}=true(?![\w.=-])", flag, text)
    return text


def check_config_files(argv: Sequence[str], options: Sequence[str] = ("--config",)) -> None:
    """Read every config file (`--config FILE`, `--config=FILE`; `-c FILE` where `options` has it: radar-train
    fit and validate, LightningCLI's) with the input error path: one line naming the file if it is missing,
    binary, not YAML, or not a mapping (an empty one is {}). Inline YAML / JSON strings are left to the parser.
    Group files and the groups inside a file are checked when the parser is known (`checked_parsing`)."""
    from radar_train.inputs import InputError, read_yaml

    for option, value in _config_values(argv, options):
        p = Path(value)
        if p.is_fifo() or p.is_socket():  # (<(...) too: read here, then again by the parser, which found it empty)
            raise InputError(f"{value}: config file ({option}) is a pipe, which can be read only once, and the "
                             f"command reads its config file twice (to check it, then to parse it): give a file, or "
                             f"the YAML itself, {option} \"$(cat FILE)\"")
        if p.exists() or p.is_symlink():
            read_yaml(p, "config file")
        elif not any(c in value for c in "{}:\n"):
            raise InputError(f"{value}: config file not found ({option})")


def _groups(parser) -> set[str]:
    """The keys of the parser's groups of options ('model', 'model.lora', 'trainer'): a dataclass or class
    parameter, which is also an option taking a file or a mapping (`--model FILE`). jsonargparse makes no
    group of an Optional[dataclass] field: that is one typed option, whose check already refuses a list."""
    return {k for k in parser.groups if f"--{k}" in parser._option_string_actions}


def _subparsers(parser) -> dict:
    action = getattr(parser, "_subcommands_action", None)
    return dict(getattr(action, "choices", None) or {})


def _takes_null(parser, key: str) -> bool:
    """Whether the group option `--key` is typed Optional (LightningCLI's `optimizer` and `lr_scheduler`, which
    it saves as `null` in RUN/config.yaml when the module configures its own): null then means "none", not a
    group that is not a mapping."""
    hint = getattr(parser._option_string_actions.get(f"--{key}"), "_typehint", None)
    return hint is not None and type(None) in get_args(hint)


def _refuses_null(parser, key: str) -> Optional[str]:
    """The type of the option `--key` where it does not take null (jsonargparse checks a null from a config file
    against no type: `batch_size: null` was a traceback, `checkpoints: null` a run without checkpoints), else None.
    A required option, or one without a default (`--cache`, `--data.caches`), takes it: `--print_config` prints it
    null, and an option after the file gives it (the parser refuses it when none does)."""
    action = parser._option_string_actions.get(f"--{key}")
    hint = getattr(action, "_typehint", None)
    if hint is None or hint is Any or hint is object or hint is type(None) or action.required \
            or action.default is None:
        return None
    args = get_args(hint)
    if type(None) in args or None in args:  # (Optional[...], Literal[..., None])
        return None
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def _found(value: object) -> str:
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}: {one_line(repr(value))[:60]}"


def _group_file(folder: Path, value: str) -> Optional[Path]:
    """The file `value` names in a config file in `folder`: beside it, where jsonargparse reads it (not in the
    working folder), or None."""
    p = folder / value
    return p if "\n" not in value and (p.is_file() or p.is_symlink()) else None


_CLASS_KEYS = ("class_path", "init_args", "dict_kwargs", "__path__")  # (jsonargparse's own keys of a class group)


def check_groups(doc: dict, parser, path: object, prefix: str = "") -> None:
    """Every group key of `doc` (read from the file `path`) must hold a mapping of the group's fields:
    InputError naming the file and the dotted key otherwise (jsonargparse passes a list or a number
    there on to the dataclass, which fails with a TypeError or is ignored); null only where the group's type
    is Optional (what `radar-train fit` saves for `optimizer:`). A subcommand's section (a
    root-level file's `fit:`) is checked against that subcommand's groups."""
    from jsonargparse import ActionConfigFile

    from radar_train.inputs import InputError, read_yaml

    groups, subparsers = _groups(parser), _subparsers(parser)
    for key, value in doc.items():
        full = f"{prefix}{key}"
        takes = _refuses_null(parser, full) if value is None and full not in groups else None
        if takes is not None:
            raise InputError(f"{path}: {full}: null is not a value of it (it takes {takes}): leave the key out for "
                             f"its default")
        if not prefix and key == "config" and any(isinstance(a, ActionConfigFile) for a in parser._actions):
            # a file naming another (jsonargparse reads it): that one gets the same checks (it got none: a group
            # that was a number was a traceback, a misspelt key named no file)
            for name in (value if isinstance(value, list) else [value]):
                nested = _group_file(Path(path).parent, name) if isinstance(name, str) else None
                if nested is None:
                    raise InputError(f"{path}: config: {one_line(repr(name))[:80]} is not a config file beside it")
                check_groups(read_yaml(nested, f"config file (named in {path})"), parser, nested)
            continue
        if full in groups:
            if isinstance(value, str):  # a file (beside this one, as jsonargparse reads it) or inline YAML
                nested = _group_file(Path(path).parent, value)
                if nested is not None:
                    check_groups(read_yaml(nested, f"{full} file (in {path})"), parser, nested, full + ".")
                elif _FILE_NAME.fullmatch(value):  # (jsonargparse's line named an option never given, not the file)
                    raise InputError(f"{Path(path).parent / value}: {full} file (named in {path}) not found: a file "
                                     f"named in a config file is looked for beside it")
                continue
            if value is None and _takes_null(parser, full):
                continue
            if not isinstance(value, dict):
                raise InputError(f"{path}: {full} must be a mapping (of the --{full}.* options), "
                                 f"found {_found(value)}")
            check_groups(value, parser, path, full + ".")
        elif not prefix and key in subparsers and isinstance(value, dict):
            check_groups(value, subparsers[key], path)
        elif not prefix and key not in subparsers and f"--{key}" not in parser._option_string_actions:
            # (jsonargparse's own message for such a file can name neither the file nor the key)
            raise InputError(f"{path}: {key!r} is not an option of this command; is it another command's config "
                             f"file?")
        elif prefix and f"--{full}" not in parser._option_string_actions and key not in _CLASS_KEYS:
            # a misspelt key inside a group (`sampling: {topk: 5}`): jsonargparse's line named neither the file
            # nor, with several config files, which of them
            raise InputError(f"{path}: {full!r} is not an option of this command (`--help` lists the options)")


def _levels(parser, argv: list[str]) -> list[tuple[object, int, int]]:
    """argv split by subcommand: (parser, start, end) of the root's options, then of each subcommand's."""
    levels, current, start, i = [], parser, 0, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            action = current._option_string_actions.get(a)
            takes_value = action is None or action.nargs != 0
            i += 2 if takes_value and i + 1 < len(argv) and not argv[i + 1].startswith("-") else 1
            continue
        sub = _subparsers(current).get(a)
        if sub is not None:
            levels.append((current, start, i))
            current, start = sub, i + 1
        i += 1
    levels.append((current, start, len(argv)))
    return levels


_FILE_NAME = re.compile(r"[^\s{}\[\]:,]+\.(?:ya?ml|json)")  # a value naming a config file, not inline YAML


def check_parser_args(parser, argv: Sequence[str]) -> list[str]:
    """argv as `parser` should see it: every config file (`--config` / `-c` of the parser or of its
    subcommand) and every file given to a group option (`--model FILE`, `--accel.fastvar FILE`) is read
    with the input error path and its groups checked (`check_groups`); a file that sets nothing (empty, or
    comments only) is dropped with its option, as an empty config means nothing to set."""
    from jsonargparse import ActionConfigFile

    from radar_train.inputs import InputError, read_yaml, read_yaml_text

    argv = list(argv)
    dropped: set[int] = set()
    for sub, start, end in _levels(parser, argv):
        configs = [o for a in sub._actions if isinstance(a, ActionConfigFile) for o in a.option_strings]
        group_options = {f"--{k}": k for k in _groups(sub)}
        i = start
        while i < end:
            found = _option_value(argv[:end], i, [*configs, *group_options])
            if found is None:
                i += 1
                continue
            option, value, taken = found
            p = Path(value)
            # a name that is not there (a value that is not a file name is inline YAML, as jsonargparse reads it)
            if not (p.exists() or p.is_symlink()) and _FILE_NAME.fullmatch(value):
                raise InputError(f"{p}: {option} file not found")
            group = group_options.get(option)
            if p.exists() or p.is_symlink():
                doc = read_yaml(p, f"{option} file" if group else "config file")
                check_groups(doc, sub, p, f"{group}." if group else "")
                if not doc:
                    dropped.update(range(i, i + taken))
            else:  # YAML given inline (`--config "$(cat FILE)"`): the same checks (its groups went unchecked)
                doc = read_yaml_text(value, f"{option} value")
                if isinstance(doc, dict):
                    check_groups(doc, sub, f"{option} (YAML given inline)", f"{group}." if group else "")
            i += taken
    return [a for i, a in enumerate(argv) if i not in dropped]


_REQUIRED = "the following arguments are required: "


def _option_name(parser, key: str) -> str:
    """The command-line spelling of a parser key: 'fit.data.caches' -> '--data.caches' (after `fit`);
    a positional argument keeps its name."""
    first, dot, rest = key.partition(".")
    sub = _subparsers(parser).get(first) if dot else None
    if sub is not None:
        return _option_name(sub, rest)
    action = next((a for a in parser._actions if a.dest == key), None)
    names = [] if action is None else action.option_strings
    return next((o for o in names if o.startswith("--")), names[0] if names else key)


def _required_options(parser, message: str) -> str:
    """jsonargparse's 'the following arguments are required: ...' with the options spelt as typed."""
    head, sep, keys = message.partition(_REQUIRED)
    if not sep or "\n" in keys:
        return message
    return head + sep + ", ".join(_option_name(parser, k.strip()) for k in keys.split(","))


def _no_abbreviations(parser) -> None:
    """Options are taken as spelt in full, by `parser` and its subcommands' parsers: `--worker 3` is an unknown
    option, not `--worker_index 3`. jsonargparse 4 expanded a unique prefix with a deprecation warning (two
    paragraphs above the command's output) and 5 refuses it; an expansion would also change meaning as options are
    added."""
    parser.allow_abbrev = False
    for action in getattr(parser, "_actions", ()):
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


@contextlib.contextmanager
def checked_parsing() -> Iterator[None]:
    """While an entry point's body runs, every jsonargparse `parse_args` (LightningCLI's too) first reads
    the config and group files of its argv and checks their groups (`check_parser_args`), and names
    missing required options as on the command line. The parser is only known inside the body, which
    builds it; jsonargparse has no hook there, so its method is wrapped for the while and restored."""
    from jsonargparse import ArgumentError, ArgumentParser

    from radar_train.inputs import InputError

    original = ArgumentParser.parse_args
    if getattr(original, "_radar_checked", False):  # already inside
        yield
        return

    def parse_args(self, args=None, *rest, **kwargs):
        args = sys.argv[1:] if args is None else args
        _no_abbreviations(self)
        try:
            args = check_parser_args(self, args)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - a jsonargparse whose internals differ: parse unchecked
            logging.getLogger(__name__).debug("config files not checked first (%s: %s)", type(e).__name__, e)
        try:
            return original(self, args, *rest, **kwargs)
        except ArgumentError as e:
            message = _required_options(self, str(e))
            if message == str(e):
                raise
            raise ArgumentError(None, message) from None

    parse_args._radar_checked = True
    ArgumentParser.parse_args = parse_args
    loader = _strict_values()
    try:
        yield
    finally:
        ArgumentParser.parse_args = original
        if loader is not None:
            loader()


def _strict_values():
    """jsonargparse's YAML value loader made strict about numbers (`inputs.strict_value_loader`) for the while;
    returns what puts the original back (None where this jsonargparse has no such loader)."""
    try:
        from jsonargparse import get_loader, set_loader
        from jsonargparse._loaders_dumpers import get_loader_exceptions

        from radar_train.inputs import strict_value_loader

        original = get_loader("yaml")
        exceptions = get_loader_exceptions("yaml")
        set_loader("yaml", strict_value_loader(original), exceptions)
    except (ImportError, KeyError, AttributeError):
        return None
    return lambda: set_loader("yaml", original, exceptions)


def model_inputs(model, prefix: str = "--model") -> dict:
    """The files a ModelArgs names, by option (for the output overlap checks)."""
    return {f"{prefix}.vae_checkpoint": getattr(model, "vae_checkpoint", None),
            f"{prefix}.var_checkpoint": getattr(model, "var_checkpoint", None)}


def accel_inputs(accel, prefix: str = "--accel") -> dict:
    """The files an AccelArgs names (StageVAR rank ratios, SCA-Mask mask file), by option."""
    out = {}
    for group, field in (("stagevar", "rank_ratios"), ("sca", "mask_file")):
        value = getattr(getattr(accel, group, None), field, None)
        if value is not None:
            out[f"{prefix}.{group}.{field}"] = value
    return out


def note_merged_vqvae(pipe, model, command: str, vanilla: str) -> None:
    """Print a note when the pipeline's VQ-VAE is a file of `radar-train merge` (RadarPipeline.merged_vqvae): the
    command's vanilla output (`vanilla`) is decoded with the adapter too, and would pass for the base VQ-VAE's."""
    if getattr(pipe, "merged_vqvae", None) is not None:
        print(f"{command}: note: --model.vae_checkpoint {model.vae_checkpoint} has a RADAR adapter merged in "
              f"(radar-train merge), so {vanilla} is decoded with it too; for vanilla images use the base VQ-VAE file")


def print_error(message: object) -> None:
    print(f"error: {one_line(worker_error(message))}", file=sys.stderr)


def print_notes(error: BaseException) -> None:
    """The notes added to an error (`add_note`: what the command did about it), a line each, after its own line
    (a traceback prints them itself)."""
    for note in getattr(error, "__notes__", None) or ():
        print(note, file=sys.stderr)


_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback")


def worker_error(message: object) -> object:
    """An error a DataLoader worker raised, as torch re-raises it in the run (its message is the worker's whole
    traceback): the worker's own message, e.g. the damaged cache shard it names; anything else unchanged."""
    text = str(message)
    m = _WORKER_ERROR.match(text)
    last = text.rstrip().splitlines()[-1] if m else ""
    prefix = re.match(r"[\w.]*" + re.escape(m.group(1)) + r": ", last) if m else None
    return f"{last[prefix.end():]} (in DataLoader worker {m.group(2)})" if prefix else message


def show_field_docs(args: Sequence[str]) -> None:
    """For --help, the config dataclasses' attribute docstrings (a field's text under it) as option help. Read
    only then: jsonargparse reads them from the source of every class it adds, Lightning's Trainer too, which
    took most of the time radar-train needs to build its parser (1.6 of 2.2 s)."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=any(a in ("-h", "--help") for a in args))


def _storage_errors() -> tuple[type[BaseException], ...]:
    """safetensors' own error type (a failed write of an adapter or weights file is not an OSError there)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # (older safetensors)
        return ()
    return (SafetensorError,)


def describe_os_error(e: BaseException) -> str:
    """`<file>: <reason> (errno N)` of an operating-system error (the file when the error names one), e.g.
    `checkpoints/run/final/adapter_model.safetensors: No space left on device (errno 28)`."""
    if isinstance(e, OSError) and e.strerror:
        what = f"{e.filename}: " if e.filename is not None else ""
        return f"{what}{e.strerror}" + (f" (errno {e.errno})" if e.errno else "")
    return str(e)


STOPPED_STATUS = 143  # (128 + SIGTERM: the status of a process the signal ended)
# the signals that stop a long command at a point where it saves: SIGTERM, and SIGHUP (its terminal or ssh session
# closed: it ended the command without a save, losing what SIGTERM keeps)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_stop_signal = {"signum": signal.SIGTERM}  # the signal that raised the last Stopped


class Stopped(BaseException):
    """SIGTERM (or SIGHUP) during a long loop (raised by `sigterm_stops`' handler): the command saves what it has
    and ends (`stopped_status`, `stop_name`)."""


def stop_name() -> str:
    """The name of the signal that raised the last Stopped (SIGTERM unless SIGHUP did)."""
    return signal.Signals(_stop_signal["signum"]).name


def stopped_status() -> int:
    """The exit status of a command the last Stopped ended: 128 + its signal (143 for SIGTERM, 129 for SIGHUP), as
    a process that signal ended (STOPPED_STATUS for SIGTERM)."""
    return 128 + int(_stop_signal["signum"])


class StopHandle:
    """What `sigterm_stops` yields: `hand_over()` where another handler of the command takes the signals over."""

    def __init__(self) -> None:
        self.over = False
        self.handler: Optional[Callable] = None
        self.previous: dict = {}

    def hand_over(self) -> None:
        """From here a signal that reaches this handler does nothing (a handler that took over may still call it:
        Lightning's calls the one it found); where it is still the one installed, the handler before it is back."""
        self.over = True
        for sig, before in self.previous.items():
            if signal.getsignal(sig) is self.handler:
                signal.signal(sig, before)


def signal_in_chain(error: BaseException) -> Optional[BaseException]:
    """The Stopped or KeyboardInterrupt that `error` was raised from (its __cause__ chain), or None."""
    seen = error.__cause__
    for _ in range(8):
        if seen is None or isinstance(seen, (Stopped, KeyboardInterrupt)):
            return seen
        seen = seen.__cause__
    return None


@contextlib.contextmanager
def sigterm_stops() -> Iterator[StopHandle]:
    """SIGTERM raises Stopped in the main thread (once: a second one, while the command saves, is ignored; SLURM
    sends SIGKILL after its grace time anyway); the handler before is put back afterwards, unless the block set
    another (`signals_ignored_to_the_end`: its outputs going into place, it ignores SIGTERM to its end). A process
    forked inside the block (a DataLoader worker) leaves the signal to the command: its copy of the handler does
    nothing. Yields a StopHandle."""
    import threading

    handle = StopHandle()
    if threading.current_thread() is not threading.main_thread():
        yield handle
        return
    pid = os.getpid()

    def stop(signum, frame):
        if handle.over or os.getpid() != pid:
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _stop_signal["signum"] = signum
        raise Stopped

    handle.handler = stop
    handle.previous = previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield handle
    except Exception as e:  # (the signal came in a class body's `__set_name__` (peft's config classes, imported
        inner = signal_in_chain(e)  # inside the block): Python 3.11 wraps what it raised in a RuntimeError)
        if inner is None:
            raise
        raise inner from None
    finally:
        for sig, before in previous.items():
            if _HANDLERS_BEFORE.get(sig) is stop:  # (ignored to the end inside: kept; run_main puts back the
                _HANDLERS_BEFORE[sig] = before  # handler before the block, not this one)
            else:
                signal.signal(sig, before)


def end_stopped_run(prog: str, error: BaseException, said: str) -> int:
    """How a long command ends when `error` stopped it, `said` telling what it kept: SIGTERM (Stopped) prints
    `PROG: stopped by SIGTERM; SAID` on stderr (as radar-train does, and as every error line goes) and returns
    STOPPED_STATUS (the command's exit status); Ctrl-C raises KeyboardInterrupt("interrupted; SAID") (run_main's
    one line, status 130); any other error is raised again with the note `PROG: SAID`."""
    if isinstance(error, Stopped):
        say(f"{prog}: stopped by {stop_name()}; {said}")
        return stopped_status()
    if isinstance(error, KeyboardInterrupt):
        raise KeyboardInterrupt(f"interrupted; {said}") from None
    error.add_note(f"{prog}: {said}")
    raise error


def say(line: str) -> None:
    """`line` on stderr, flushed; nothing where stderr can no longer be written (the terminal a SIGHUP came from
    is gone): the command's status still says how it ended."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def thread_error_line(prog: str, default: Callable) -> Callable:
    """A threading.excepthook that says an operating-system error ending a background thread in one warning line
    (TensorBoard's event writer on a full disk printed an 18-line traceback before the command's own error line);
    any other error goes to `default` (its traceback: a bug)."""
    def hook(args) -> None:
        if isinstance(args.exc_value, OSError):
            say(f"warning: {prog}: a background thread ({type(args.thread).__name__}) stopped: "
                f"{describe_os_error(args.exc_value)}")
            return
        default(args)

    return hook


def run_until_stopped(prog: str, run: Callable[[], Any], said: str = "nothing was written",
                      ends_command: bool = False) -> Any:
    """`run()` under `sigterm_stops`; None when SIGTERM stopped it, said on stderr (`PROG: stopped by SIGTERM;
    SAID`: the caller returns stopped_status()); Ctrl-C raises KeyboardInterrupt("interrupted; SAID") (run_main's
    one line, status 130). For a command with no progress to keep (SIGTERM ended it without a line).
    `ends_command`: once `run()` returned, what follows (its table, its files) is the command's end:
    `signals_ignored_to_the_end`."""
    try:
        with sigterm_stops():
            result = run()
    except (Stopped, KeyboardInterrupt) as e:
        end_stopped_run(prog, e, said)  # (raises for Ctrl-C)
        return None
    if ends_command:
        signals_ignored_to_the_end()
    return result


_HANDLERS_BEFORE: dict = {}  # the handlers signals_ignored_to_the_end replaced (run_main puts them back)


def signals_ignored_to_the_end() -> None:
    """SIGTERM and Ctrl-C ignored from here to the command's end: the moves of its finished outputs into place and
    the exit after them. A SIGTERM there (a time limit's, a scancel's) killed the process with status 143, which
    slurm/fid.sbatch reads as "stopped, progress saved": it requeued a finished run, whose rerun was then refused
    by its own outputs; a Ctrl-C said "interrupted" (130) with the outputs in place. run_main puts the handlers
    back when the command was called from Python; a command run as a process ends with them ignored (SLURM's
    SIGKILL still comes after its grace time). With `radar_train.outputs.swaps_end_command`, the hook of a command
    whose last step is a swap of its outputs."""
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (*STOP_SIGNALS, signal.SIGINT):
            previous = signal.signal(sig, signal.SIG_IGN)
            _HANDLERS_BEFORE.setdefault(sig, previous)


def _command_ended(own_process: bool) -> None:
    """After a command's body: as a process, SIGTERM and Ctrl-C are ignored on the way out (its work is done or
    said: a SIGTERM now would only turn its status into 143, and a Ctrl-C in the exit's thread joins or atexit
    callbacks printed a KeyboardInterrupt traceback, or ended the process by SIGINT without a line); called from
    Python, the handlers signals_ignored_to_the_end replaced are put back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if own_process:
        for sig in (*STOP_SIGNALS, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    while _HANDLERS_BEFORE:
        sig, handler = _HANDLERS_BEFORE.popitem()
        if not own_process:
            signal.signal(sig, handler)


def out_of_memory(e: BaseException) -> Optional[str]:
    """What ran out of memory, in a few words, for an allocator's error: CUDA's (torch.OutOfMemoryError), the
    CPU's (a RuntimeError 'can't allocate memory'), Python's (MemoryError); None for another error."""
    import torch

    text = " ".join(str(e).split())
    if isinstance(e, torch.OutOfMemoryError):
        return "out of memory (" + ". ".join(text.split(". ")[:2]).rstrip(".")[:200] + ")"
    m = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if m:
        return f"out of memory (an allocation of {int(m.group(1)) / 2 ** 30:.1f} GiB failed on the CPU)"
    if isinstance(e, MemoryError):
        return "out of memory"
    return None


_PEER_GONE = re.compile(r"connection (closed|reset) by peer|remote (worker|process|rank)|broken pipe|"
                        r"communicator was aborted|process group .*(aborted|shut ?down)", re.IGNORECASE)


def lost_peer(e: BaseException) -> Optional[str]:
    """For the error of a collective whose other process is gone (gloo's "Connection closed by peer" when a
    rank failed, was killed or ran out of memory; NCCL's aborted communicator): what happened, in one line,
    without the backend's source location; None for another error. The surviving process of a multi-process
    run printed a traceback of the collective it waited in, after (or instead of) the failed rank's own line."""
    import torch.distributed as dist

    first = " ".join(str(e).split("\n")[0].split())
    if not (_PEER_GONE.search(first) and (isinstance(e, getattr(dist, "DistError", ()))
                                          or re.search(r"gloo|nccl|mpi|ucc", first, re.IGNORECASE))):
        return None
    said = re.sub(r"^\[[^\]]*\]\s*", "", first)  # ([/path/gloo/transport/tcp/pair.cc:553])
    said = said.split(". ")[0].rstrip(".")
    backend = next((b for b in ("gloo", "NCCL", "MPI", "UCC") if b.lower() in first.lower()), None)
    return (f"another process of the run ended (it failed, was killed or ran out of memory) and this one lost its "
            f"connection to it ({f'{backend}: ' if backend else ''}{said[:160]}): that process's own error, where it "
            f"had time to print one, says why")


def _smaller_batch(args: Sequence[str]) -> str:
    """What to lower after running out of memory: the batch-size options given (`--setup.batch_size`), or the
    command's batch size."""
    given = [a.split("=")[0] for a in args if a.startswith("--") and "batch_size" in a.split("=")[0]]
    return f"lower {' / '.join(dict.fromkeys(given))}" if given else "lower the command's batch size"


def run_main(prog: str, body: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
             errors: tuple[type[BaseException], ...] = (), check_configs: bool = True,
             commands: Sequence[str] = ()) -> NoReturn:
    """Run `body(args)` (args: argv, or sys.argv[1:]) and exit with its status; a parse error or one of
    USER_ERRORS (and `errors`) is one line on stderr and exit status 2, Ctrl-C one line and 130. Config files are read first
    (unless `check_configs` is false: the body calls check_config_files itself), and again with their
    groups checked when the body parses (`checked_parsing`). `commands`: the program's subcommands, so that a parse
    error after one points to its help (`radar-toy measure --help`), which lists its options."""
    from jsonargparse import ArgumentError

    from radar_train.progress import check_env

    if argv is None:  # (the process's own command line, not a call from Python)
        utf8_mode_or_reexec()
        import threading

        threading.excepthook = thread_error_line(prog, threading.excepthook)
    tolerant_streams()
    args = expand_flags(sys.argv[1:] if argv is None else argv)
    show_field_docs(args)
    quiet_library_warnings()
    # torch's INFO lines (FakeTensor cache statistics at exit, logged through the root logger's INFO handler and the
    # rank filter, which imported Lightning during an interrupted start: 40-64 lines after `interrupted`)
    if not os.environ.get("TORCH_LOGS"):
        logging.getLogger("torch").setLevel(logging.WARNING)
    plain_own_warnings()
    reopen_closed_streams(logging.getLogger())
    try:
        check_env()  # RADAR_PROGRESS / RADAR_PROGRESS_INTERVAL, before any work
        if check_configs:
            check_config_files(args)
        with checked_parsing():
            try:
                code = body(args)
            finally:
                _command_ended(own_process=argv is None)
    except ArgumentError as e:
        sub = f"{prog} {args[0]}" if args and args[0] in commands else prog
        given = sys.argv[1:] if argv is None else argv
        print(f"error: {_flags_as_given(_base60_hint(_parse_error(e), args), given)} (`{sub} --help` lists the "
              f"options)", file=sys.stderr)
        sys.exit(2)
    except (*USER_ERRORS, *errors) as e:
        print_error(e)
        print_notes(e)
        sys.exit(2)
    except BrokenPipeError:  # stdout's reader left (`radar-train fit --help | head`): quietly, as shell tools end
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush would fail again)
        except (OSError, ValueError):
            pass
        sys.exit(141)
    except (OSError, *_storage_errors()) as e:  # a full disk, a quota, a lost mount: one line, not a traceback
        print_error(f"{prog}: {describe_os_error(e)}")
        print_notes(e)
        sys.exit(1)
    except (RuntimeError, MemoryError) as e:  # out of memory (a batch too large): one line, not a traceback
        what = out_of_memory(e)
        if what is None:
            peer = lost_peer(e)  # (a multi-process run's other process gone: one line too, its own above)
            if peer is None and isinstance(signal_in_chain(e), KeyboardInterrupt):  # (Ctrl-C in an import's
                print(f"{prog}: interrupted", file=sys.stderr)  # `__set_name__`: Python 3.11 wraps it)
                sys.exit(130)
            if peer is None:
                raise
            print_error(f"{prog}: {peer}")
            print_notes(e)
            sys.exit(1)
        print_error(f"{prog}: {what}" + ("" if getattr(e, "__notes__", None) else f": {_smaller_batch(args)}"))
        print_notes(e)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C: one line (what was being done, if the body said), not a traceback
        print(f"{prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
