"""One error path for every file a user hands in (checkpoints, configs, caches, adapters, rank or mask files).

Whatever goes wrong while reading (missing, a folder where a file is expected, no permission, a truncated
zip / pickle / safetensors file, binary junk where YAML or JSON is expected, a YAML list where a mapping
is expected) becomes an `InputError`: a `ValueError` whose message is one line, "<path>: <what is wrong>".
The command-line entry points print it as `error: ...` and exit with status 2.

    with reading(path, "rank-ratio file"):      # any exception inside -> InputError naming the file
        ...
    read_yaml(path, "config")                   # text, YAML, a mapping
    load_torch(path, "checkpoint")              # torch.load(weights_only=True) on the CPU
    load_safetensors(path, "adapter weights")   # every tensor (header and data checked)
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

__all__ = ["InputError", "NotWeights", "check_file", "check_dir", "reading", "read_text", "read_yaml", "read_json",
           "load_torch", "load_safetensors", "failure_reason"]


class InputError(ValueError):
    """A file or folder given as input cannot be used; the message is one line and names it."""


class NotWeights(ValueError):
    """A torch file that is not one of weights: the message is the reason as it reads after the file's name."""


def _one_line(text: str, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def failure_reason(e: BaseException) -> str:
    """What a read failure means, in a few words (no path: the caller names the file)."""
    import yaml

    if isinstance(e, IsADirectoryError):
        return "is a folder, expected a file"
    if isinstance(e, FileNotFoundError):
        return "not found"
    if isinstance(e, PermissionError):
        return "cannot be read (permission denied)"
    if isinstance(e, UnicodeDecodeError):
        return f"is not a text file (binary data at byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        return f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"is not valid YAML (line {e.problem_mark.line + 1}: {_one_line(e.problem or e.context or '')})"
    if isinstance(e, yaml.YAMLError):
        return f"is not valid YAML ({_one_line(str(e))})"
    if isinstance(e, EOFError):
        return "is empty or truncated"
    if isinstance(e, NotWeights):
        return str(e)
    text = _one_line(str(e)) or type(e).__name__
    if "zip" in text.lower() or "pickle" in text.lower() or "central directory" in text.lower():
        return f"is truncated or not a torch checkpoint ({text.split('. ')[0]})"
    if type(e).__name__ == "SafetensorError":
        return f"is truncated or not a safetensors file ({text})"
    return f"cannot be read ({type(e).__name__}: {text})"


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Run the block that reads `path`; any failure becomes InputError("<path>: <what> <reason>")."""
    p = Path(path)
    try:
        yield p
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - every read failure of a user's file is one line naming it
        raise InputError(f"{p}: {what} {failure_reason(e)}") from None


def unexpanded_home(path: str | os.PathLike) -> Optional[str]:
    """For a path whose first part is `~` or `~user`, as given (only a shell expands it, at the start of a word: in
    a config file, quoted, or after `=` it stays literal): what it expands to (itself for an unknown user); None
    for any other path."""
    given = os.fspath(path)
    return os.path.expanduser(given) if given.split(os.sep)[0].startswith("~") else None


YAML_NULLS = "~, null, an empty value and a text starting with # read as YAML null"
"""Why a path option given as `--output=~` or `--output '#a'`, or left empty in a config file, arrives unset."""


def _not_found(p: Path, what: str) -> InputError:
    """`<path>: <what> not found`, with the expanded path where it starts with a `~` no shell expanded."""
    expanded = unexpanded_home(p)
    hint = f" ('~' is not expanded here: give {expanded})" if expanded not in (None, str(p)) else ""
    return InputError(f"{p}: {what} not found{hint}")


def check_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a Path if it is a readable regular file; InputError otherwise."""
    p = Path(path)
    if not p.exists():
        raise _not_found(p, what)
    if p.is_dir():
        raise InputError(f"{p}: {what} is a folder, expected a file")
    if p.is_char_device() or p.is_block_device():  # (/dev/zero reads for ever)
        raise InputError(f"{p}: {what} is a device, expected a file")
    if p.is_fifo() or p.is_socket():  # (opening a pipe with no writer waits for ever; one with a writer reads once)
        raise InputError(f"{p}: {what} is a pipe or a socket, expected a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: {what} cannot be read (permission denied)")
    return p


def check_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """`path` as a Path if it is a readable folder; InputError otherwise."""
    p = Path(path)
    if not p.exists():
        raise _not_found(p, what)
    if not p.is_dir():
        raise InputError(f"{p}: {what} is a file, expected a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise InputError(f"{p}: {what} cannot be read (permission denied)")
    return p


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    p = check_file(path, what)
    with reading(p, what):
        return p.read_text(encoding="utf-8")


class _AmbiguousNumber(Exception):
    """A plain scalar YAML 1.1 reads as a number other than its digits say: `1:5` (base 60: 65), `010` (octal: 8)."""

    def __init__(self, text: str, value: object, line: int):
        super().__init__(text)
        self.text, self.value, self.line = text, value, line


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping: the second replaced the first without a word (a whole group dropped)."""

    def __init__(self, key: object, line: int, first: int):
        super().__init__(f"key {key!r} is given twice in one mapping (lines {first} and {line}): the second would "
                         f"replace the first without a word; give it once")
        self.key, self.line, self.first = key, line, first


@functools.lru_cache(maxsize=None)
def _strict_loader():
    """yaml.SafeLoader that refuses base-60 numbers (`1:5` is 65, `1:00:00` is 3600) and octal ones with a leading
    0 (`010` is 8): the same text typed on the command line is another number (10) or a string, and a shard range
    `val_shards: 1:5` read silently as shard 65."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # (before the merge keys `<<:` are flattened into it: a key after one overrides what it merged)
            seen: dict = {}
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # (an unhashable key: SafeLoader's own error says so)
                    continue
            return super().construct_mapping(node, deep=deep)

    def number(loader, node, construct):
        value = construct(loader, node)
        text = node.value.replace("_", "").lstrip("+-")
        if ":" in text or (text[:1] == "0" and len(text) > 1 and text[1:2].isdigit()):
            raise _AmbiguousNumber(node.value, value, node.start_mark.line + 1)
        return value

    Loader.add_constructor("tag:yaml.org,2002:int",
                           lambda ld, n: number(ld, n, yaml.SafeLoader.construct_yaml_int))
    Loader.add_constructor("tag:yaml.org,2002:float",
                           lambda ld, n: number(ld, n, yaml.SafeLoader.construct_yaml_float))
    return Loader


# digits around a colon (base 60) or a 0 before a digit or an underscore at a number's start (octal): a value
# without either holds no number `_strict_loader` refuses
_MAYBE_AMBIGUOUS = re.compile(r"\d:\d|(?<![\w.])0[\d_]")


def strict_value_loader(original: Callable[[str], Any]) -> Callable[[str], Any]:
    """jsonargparse's YAML loader `original` for a command-line value, refusing a plain number that YAML 1.1 reads
    otherwise than its digits (`--seeds '[010]'` is seed 8, `--batch_size 1:5` is 65) as `read_yaml` refuses it
    in a file (ValueError; jsonargparse names the option). Otherwise the value loads as `original` loads it."""
    def load(stream: str, *args, **kwargs) -> Any:
        import yaml

        if not _MAYBE_AMBIGUOUS.search(stream):  # (most values: loaded once, not twice)
            return original(stream, *args, **kwargs)
        try:
            yaml.load(stream, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass; only to look
        except _AmbiguousNumber as e:
            raise ValueError(f"{e.text} reads in YAML as the number {e.value!r}, not as written: quote it "
                             f"('{e.text}') for text such as a shard range, or write the number you mean "
                             f"plainly") from None
        except _DuplicateKey as e:
            raise ValueError(str(e)) from None
        except yaml.YAMLError:
            pass  # (the original says what is wrong with it)
        return original(stream, *args, **kwargs)

    return load


def read_yaml(path: str | os.PathLike, what: str = "YAML file", mapping: bool = True) -> Any:
    """The YAML document of `path`; with `mapping`, it must be a mapping (an empty file is {}). A plain number
    YAML 1.1 reads otherwise than its digits (`1:5`, `010`) is refused, naming it: quoted, it is text."""
    text = read_text(path, what)
    with reading(path, what):
        doc = _load_strict(text, f"{path}: {what}")
    if mapping:
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise InputError(f"{path}: {what} is not a YAML mapping of keys to values (found a {type(doc).__name__})")
    return doc


def read_yaml_text(text: str, what: str) -> Any:
    """The YAML document of `text` (given inline, `what` naming it), refused as `read_yaml` refuses a file's (a number
    YAML 1.1 reads otherwise than its digits, a key given twice); None where it is not YAML (the parser says why)."""
    import yaml

    try:
        return _load_strict(text, what)
    except yaml.YAMLError:
        return None


def _load_strict(text: str, where: str) -> Any:
    """`text` loaded with `_strict_loader`; what it refuses is an InputError starting `where` (the file and what it
    is, or the option given the text)."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except _AmbiguousNumber as e:
        raise InputError(f"{where}: {e.text} (line {e.line}) reads in YAML as the number {e.value!r}, not as "
                         f"written: quote it ('{e.text}') for text such as a shard range or a time, or write the "
                         f"number you mean plainly") from None
    except _DuplicateKey as e:
        raise InputError(f"{where}: {e}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", mapping: bool = True) -> Any:
    text = read_text(path, what)
    with reading(path, what):
        doc = json.loads(text)
    if mapping and not isinstance(doc, dict):
        raise InputError(f"{path}: {what} is not a JSON object (found a {type(doc).__name__})")
    return doc


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load of a checkpoint file on the CPU, with weights_only=True (no arbitrary unpickling), after the
    CRC of every entry of its zip archive: torch's reader does not check them, so a file whose bytes were
    damaged on disk loaded with whatever the damage made of its tensors (a resumed run trained on NaN). For
    radar-train's checkpoints (LoRA and optimizer state: megabytes), not for a model's weights."""
    p = check_file(path, what)
    with reading(p, what):
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise InputError(f"{p}: {what} is damaged: the data of its entry {bad} fails its CRC check")
        return torch_load_weights(p)


def torch_load_weights(path: str | os.PathLike, mmap: bool = False) -> Any:
    """torch.load(path, weights_only=True) on the CPU. A TorchScript archive (torch.jit.save) is refused by
    its name, without torch's warning about it (a line of its own before the caller's one error line). `mmap`:
    memory-mapped where the file is a zip file (torch's format since 1.6; others are read whole)."""
    import warnings

    import torch

    script = "looks like a TorchScript archive"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f".*{script}", category=UserWarning)
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)  # (said below)
        try:
            if mmap and zipfile.is_zipfile(path):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            if "TorchScript" in str(e):
                raise NotWeights("is a TorchScript archive (torch.jit.save), not a file of weights") from None
            raise _not_weights(path, e) or e


def _not_weights(path: str | os.PathLike, e: Exception) -> NotWeights | None:
    """What torch.load's failure on `path` means when torch's own text would mislead: a file torch.save cannot have
    written (it writes a zip archive, or before torch 1.6 a pickle of protocol 2: torch's text then speaks of
    weights_only), or a pickle weights_only=True refuses, of objects other than tensors and plain values (torch's
    text then runs to a dozen lines). None otherwise (a truncated zip: failure_reason says so from torch's text)."""
    import pickle
    import re

    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return None
    if head and head != b"PK" and head[0] != 0x80 and not zipfile.is_zipfile(path):  # (PK: a zip's start)
        return NotWeights("is not a file torch.save wrote (neither a zip archive nor a pickle of protocol 2 or later)")
    if not isinstance(e, pickle.UnpicklingError):
        return None
    text = str(e)  # (torch's text advises weights_only=False, which would run whatever the file holds: not repeated)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)
    if found:  # (an object of another class, or a function a crafted file calls: os.system, ...)
        return NotWeights(f"holds a Python object ({found.group(1).rstrip('.')}) besides tensors and plain values; "
                          f"radar_train loads weights only (torch.load with weights_only=True) and builds no objects: "
                          f"save the tensors (a state_dict) instead")
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand and operand.group(1) == "149":  # FRAME: a pickle of protocol 4 or later
        return NotWeights("was pickled with protocol 4 or later, which torch's weights-only loader does not read "
                          "(pickle operand 149): save the state_dict again with torch.save's default protocol")
    if operand:  # (another instruction it does not know: damaged bytes, most likely)
        return NotWeights(f"is damaged or not a file torch.save wrote (pickle operand {operand.group(1)} where torch's "
                          f"weights-only loader expects another)")
    reason = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip() and "documentation" not in ln
                   and "weights_only" not in ln), "")
    if "Weights only load failed" in text and reason:  # (no reason on a line of its own: a truncated file's text,
        # e.g. torch 2.4's one line, says so better through failure_reason)
        return NotWeights(f"holds something torch's weights-only loader refuses ({_one_line(reason)}); radar_train "
                          f"loads weights only and builds no objects: save the tensors (a state_dict)")
    return None


def nonfinite_keys(tensors: dict) -> list[str]:
    """The keys, sorted, of the floating-point tensors of `tensors` that hold NaN or inf."""
    import torch

    return sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))


def check_floating(tensors: dict, path: str | os.PathLike, what: str) -> None:
    """InputError naming `path` if a tensor of `tensors` is not floating point: weights files of integers (a hand
    conversion) are copied into float parameters without a word, giving rounded, wrong weights. `what`: what
    they should be ("LoRA weights radar-train wrote")."""
    bad = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if bad:
        raise InputError(f"{path}: {len(bad)} tensor(s) are not floating point (e.g. {bad[0]}, "
                         f"{tensors[bad[0]].dtype}): not {what}")


def check_finite(tensors: dict, path: str | os.PathLike, what: str) -> None:
    """InputError naming `path` if a floating-point tensor of `tensors` holds NaN or inf: weights that would turn
    every output into NaN (a decoder draws a black image, metrics come out NaN) are damaged, not input."""
    bad = nonfinite_keys(tensors)
    if bad:
        raise InputError(f"{path}: {len(bad)} tensor(s) hold NaN or inf values (e.g. {bad[0]}): the {what} is damaged")


def load_safetensors(path: str | os.PathLike, what: str = "safetensors file") -> dict:
    """Every tensor of a safetensors file (so a truncated file fails here, naming it)."""
    import safetensors.torch

    p = check_file(path, what)
    with reading(p, what):
        return safetensors.torch.load_file(str(p))
