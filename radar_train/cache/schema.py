"""What a paired-latent cache holds: array names and dtypes, file names, and the manifest.

A cache is a folder::

    cache/NAME/manifest.json          written once, when the cache is created (temp file + link)
    cache/NAME/shard-00000.zarr/      one Zarr v3 group per shard, renamed from a temporary name
    cache/NAME/shard-00001.zarr/      (`shard-00001.zarr.tmp-<token>`) when it is complete
    ...

Every shard group holds the arrays below (leading dimension = the shard's record count) and, in its
attributes, its record count, first sample index and a sha256 per array.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from radar_train.outputs import clear_stale_temps, make_folders, remove_made_folders, temp_name

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

FHAT_HQ = "fhat_hq"  # (N, Cvae, h, w) latent of the vanilla (unaccelerated) run, latent_dtype
FHAT_LQ = "fhat_lq"  # (N, Cvae, h, w) latent of the accelerated run, latent_dtype
INDICES_HQ = "indices_hq"  # (N, sum pn²) int16 token indices of every scale, concatenated; −1 = skipped scale
INDICES_LQ = "indices_lq"  # (N, sum pn²) int16
LABEL = "label"  # (N,) int16 class label
SEED = "seed"  # (N,) int64 per-sample seed
INDEX = "index"  # (N,) int64 global sample index (the plan's i)

LATENT_ARRAYS = (FHAT_HQ, FHAT_LQ)
INDEX_ARRAYS = (INDICES_HQ, INDICES_LQ)
RECORD_ARRAYS = (LABEL, SEED, INDEX)
ARRAY_NAMES = LATENT_ARRAYS + INDEX_ARRAYS + RECORD_ARRAYS
FIXED_DTYPES = {INDICES_HQ: "int16", INDICES_LQ: "int16", LABEL: "int16", SEED: "int64", INDEX: "int64"}
LATENT_DTYPES = ("float16", "float32")

# Fields that describe, but do not determine, the cache's content: they may differ on resume. The sampling
# engine only decides how the loop runs, never the tokens.
INFORMATIONAL_FIELDS = frozenset({"radar_train_version", "created", "model.vae_checkpoint", "model.var_checkpoint",
                                  "accel.rank_ratios_file", "accel.mask_file", "sampling.engine"})


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.zarr"


def shard_store(path: str | os.PathLike, read_only: bool = True):
    """The Zarr store of the shard folder at `path`: a local folder, whatever its name holds (Zarr reads a string
    as a URL, so a folder named `q::r` was opened as the chained URL `q:` and a relative `memory:x` as memory)."""
    from zarr.storage import LocalStore

    return LocalStore(os.fspath(path), read_only=read_only)


def temp_shard_name(shard: int) -> str:
    """A fresh temporary name for shard `shard` (unique per writer)."""
    return f"{shard_name(shard)}.tmp-{uuid.uuid4().hex[:12]}"


@dataclass
class Manifest:
    """The cache's identity: what made it and how to read it (manifest.json)."""

    format_version: int
    radar_train_version: str
    plan: dict  # Plan.to_dict(): classes, images_per_class (or null), num_samples, base_seed, shard_size, num_shards, rule
    model: dict  # preset, vae / var identity dicts ({"kind", "value", "config"}), checkpoint paths (informational)
    sampling: dict  # SamplingConfig as a dict
    accel: dict  # the acceleration method's describe()
    latent_shape: list  # [Cvae, h, w]
    latent_dtype: str  # float16 | float32 (as stored)
    patch_nums: list  # the model's scales; indices_* concatenate pn² tokens per scale
    precision: str  # compute dtype of the transformer: float32 | bfloat16 | float16
    storage: dict = field(default_factory=dict)  # chunk_size, compressor, compression_level
    created: str = ""  # ISO time (informational)

    @property
    def index_length(self) -> int:
        return sum(int(p) ** 2 for p in self.patch_nums)

    @property
    def num_samples(self) -> int:
        return int(self.plan["num_samples"])

    @property
    def num_shards(self) -> int:
        return int(self.plan["num_shards"])

    @property
    def shard_size(self) -> int:
        return int(self.plan["shard_size"])

    @property
    def chunk_size(self) -> int:
        return int(self.storage["chunk_size"])

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[first, stop) global sample indices of a shard."""
        a = shard * self.shard_size
        return a, min(a + self.shard_size, self.num_samples)

    def to_dict(self) -> dict:
        """JSON-normalised (int dict keys become strings, tuples lists), as it is stored."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @staticmethod
    def from_dict(d: dict, source: str = "manifest") -> "Manifest":
        names = [f.name for f in dataclasses.fields(Manifest)]
        required = [f.name for f in dataclasses.fields(Manifest)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{source} is not a radar-cache manifest: missing {', '.join(missing)}")
        problem = version_problem(d["format_version"], FORMAT_VERSION)
        if problem:
            raise ValueError(f"{source}: {problem}")
        problem = _manifest_problem(d)
        if problem:
            raise ValueError(f"{source} is not a readable radar-cache manifest: {problem}")
        return Manifest(**{k: v for k, v in d.items() if k in names})


def readable_versions(current: int) -> str:
    """The format versions a reader of format `current` reads, as said in messages ("1", "1 to 3")."""
    return "1" if current == 1 else f"1 to {current}"


def version_problem(version: Any, current: int) -> Optional[str]:
    """Why `version` (a file's format_version) is not one this radar_train reads, or None if it is one.

    Readers accept exactly the versions the code knows, 1 to `current` (integers; a bool is not one): a newer
    file may hold what this code misreads, and 0, a negative number or a non-integer was never written by
    radar_train (a hand-edited or foreign file)."""
    known = readable_versions(current)
    if type(version) is int and version > current:
        return f"format_version {version} is newer than this radar_train reads ({known}): upgrade radar_train"
    if type(version) is not int or version < 1:
        return (f"format_version {version!r} is not a format version radar_train wrote "
                f"(this radar_train reads {known})")
    return None


def shard_version_problem(attrs: dict) -> Optional[str]:
    """Why a shard group's attributes (`format_version`, written with the shard's completion) name no format
    this radar_train reads; None if they name one. A complete shard without one was not written by radar_train."""
    if "format_version" not in attrs:
        return (f"has no format_version in its attributes (radar_train writes one; this radar_train reads "
                f"{readable_versions(FORMAT_VERSION)})")
    return version_problem(attrs["format_version"], FORMAT_VERSION)


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(type(x) is int for x in v)


def _manifest_problem(d: dict) -> Optional[str]:
    """What the readers would trip over in a manifest's content (a hand-edited or damaged file); None if nothing."""
    for key in ("plan", "model", "sampling", "accel"):
        if not isinstance(d[key], dict):
            return f"{key} is not a mapping"
    plan = d["plan"]
    for key in ("num_samples", "num_shards", "shard_size", "base_seed"):
        if type(plan.get(key)) is not int or plan[key] < (0 if key == "base_seed" else 1):
            return f"plan.{key} is {plan.get(key)!r}, not a count"
    if plan["num_shards"] != -(-plan["num_samples"] // plan["shard_size"]):
        return (f"plan.num_shards {plan['num_shards']} does not fit {plan['num_samples']} samples in shards of "
                f"{plan['shard_size']}")
    if not _ints(plan.get("classes")) or not (plan.get("images_per_class") is None
                                               or type(plan["images_per_class"]) is int):
        return "plan.classes or plan.images_per_class is not what radar-cache writes"
    if not (_ints(d["latent_shape"]) and len(d["latent_shape"]) == 3) or not _ints(d["patch_nums"]):
        return "latent_shape or patch_nums is not a list of sizes"
    if d["latent_dtype"] not in ("float16", "float32"):
        return f"latent_dtype {d['latent_dtype']!r} is not float16 or float32"
    storage = d.get("storage")
    if not isinstance(storage, dict) or "chunk_size" not in storage:
        return "storage.chunk_size is missing (the readers need the chunk size the shards were written with)"
    if type(storage["chunk_size"]) is not int or storage["chunk_size"] < 1:
        return "storage.chunk_size is not a count"
    return None


def read_manifest(cache_dir: str | os.PathLike) -> Manifest:
    """The manifest of a cache; FileNotFoundError / ValueError with a one-line message if absent or invalid."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not Path(cache_dir).is_dir():
        if Path(cache_dir).exists():
            raise FileNotFoundError(f"cache folder {cache_dir} is a file, not a folder (name the cache's folder)")
        raise FileNotFoundError(f"cache folder {cache_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {cache_dir} is not a radar-cache cache "
                                f"(create one with `radar-cache run --config ... --output {cache_dir}`)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a radar-cache manifest (not a JSON object)")
    return Manifest.from_dict(d, str(path))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _short(v: Any, limit: int = 60) -> str:
    s = json.dumps(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def manifest_differences(stored: Manifest, wanted: Manifest) -> list[str]:
    """Dotted fields whose values differ ("plan.shard_size (cache: 16, now: 32)"), informational
    fields excluded. Where the acceleration method differs, its line alone stands for the method's settings
    (one method's fields are absent from the other's: a line each said nothing more)."""
    a, b = _flatten(stored.to_dict()), _flatten(wanted.to_dict())
    other_method = a.get("accel.method") != b.get("accel.method")
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in INFORMATIONAL_FIELDS or any(key.startswith(f + ".") for f in INFORMATIONAL_FIELDS):
            continue
        if other_method and key.startswith("accel.") and key != "accel.method":
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key} (cache: {_short(a.get(key, '<absent>'))}, now: {_short(b.get(key, '<absent>'))})")
    return diffs


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        with open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        time.sleep(0.5)  # let the winner finish writing
        return False


def create_or_check_manifest(cache_dir: str | os.PathLike, wanted: Manifest) -> tuple[Manifest, bool]:
    """Create the cache folder and its manifest, or check the existing one against `wanted`.

    Creation is atomic and exclusive (a complete temporary file is hard-linked to manifest.json), so
    concurrent workers end up with one manifest. Returns (the cache's manifest, created?). Raises
    ValueError naming every differing field if the existing manifest does not match."""
    cache_dir = Path(cache_dir)
    made = make_folders(cache_dir)
    path = cache_dir / MANIFEST_NAME
    created = False
    if not path.exists():
        clear_stale_temps(cache_dir, MANIFEST_NAME)
        tmp = temp_name(path)  # outputs.check_resume_dir lets a folder holding only this one be resumed
        try:
            tmp.write_text(json.dumps(wanted.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as e:  # a full disk or a quota: nothing of this call stays behind (the folders it made are
            tmp.unlink(missing_ok=True)  # removed while empty: another worker may have begun writing there)
            remove_made_folders(made)
            if e.filename is None:  # (a failed write names no file: the error line would say nothing of where)
                raise OSError(e.errno, f"{e.strerror} while writing the cache manifest", str(path)) from e
            raise
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            pass  # another worker won the race; compare with its manifest below
        except OSError:  # no hard links on this file system: exclusive create (content not atomic)
            created = _create_exclusive(path, tmp.read_bytes())
        finally:
            tmp.unlink()
    stored = read_manifest(cache_dir)
    if not created:
        diffs = manifest_differences(stored, wanted)
        if diffs:
            raise ValueError(differing_manifest_message(path, diffs))
    return stored, created


def differing_manifest_message(path: Path, diffs: list[str]) -> str:
    """The refusal of a run whose configuration differs from its cache's manifest (`manifest_differences`)."""
    return (f"{path} was made with another configuration; differing fields: " + "; ".join(diffs)
            + ". Use another --output, or the cache's own settings")
