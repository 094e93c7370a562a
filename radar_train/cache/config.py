"""Configuration of `radar-cache run` (YAML sections `plan`, `storage`, plus the shared `model`,
`sampling`, `accel` groups of radar_train.config and a few run-level fields). Defaults live here only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.inputs import YAML_NULLS

__all__ = ["PlanArgs", "StorageArgs", "CacheArgs"]


@dataclass
class PlanArgs:
    """Which (label, seed) pairs the cache holds.

    Sample i has label classes[i mod n] (n classes) and
    seed base_seed + i, so the classes are interleaved in every shard and a larger plan extends a smaller
    one with the same classes and base seed."""

    classes: Union[str, list[int]] = "all"
    """The class set: "all" (every class of the model), a range "START:STOP" (STOP excluded), "0-3,7" (ranges
    inclusive, as radar-generate's --classes), or a list."""
    images_per_class: Optional[int] = 10
    """Images per class (set it to null to give num_samples instead)."""
    num_samples: Optional[int] = None
    """Total number of samples (pairs; the classes are cycled); needs images_per_class: null."""
    base_seed: int = 0
    """Seed of sample 0; sample i gets base_seed + i. Held-out caches use a base seed beyond the
    training cache's base_seed + num_samples."""
    shard_size: int = 1024
    """Samples per shard (the unit of work between workers and of resuming)."""


@dataclass
class StorageArgs:
    """How latents are stored."""

    dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of fhat_hq / fhat_lq (float16 rounding is ~1e-3 relative, far below the HQ/LQ gap)."""
    chunk_size: int = 64
    """Samples per Zarr chunk inside a shard (the reader's block; compressed and checksummed unit)."""
    compressor: Literal["lz4", "zstd", "none"] = "lz4"
    """Blosc compressor of every chunk (byte shuffle; a crc32c checksum is added in any case). float16
    latents hardly compress (zstd saves ~8 %, lz4 ~0 %; token indices halve with either), and zstd halves
    the reader's throughput, so lz4 is the default."""
    compression_level: int = 5
    """Blosc compression level (1-9)."""


@dataclass
class CacheArgs:
    """Everything `radar-cache run` needs."""

    model: ModelArgs = field(default_factory=ModelArgs)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    accel: AccelArgs = field(default_factory=AccelArgs)
    plan: PlanArgs = field(default_factory=PlanArgs)
    storage: StorageArgs = field(default_factory=StorageArgs)
    output: Optional[str] = None
    """Cache folder (created, or resumed if it exists), e.g. cache/d16_fastvar."""
    batch_size: int = 64
    """Pairs generated per transformer call (a batch never spans two shards)."""
    device: str = "auto"
    """Torch device: auto (the process's GPU when launched by torchrun/accelerate, else cuda if available,
    else cpu), or e.g. cpu, cuda, cuda:1."""
    precision: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = "auto"
    """Compute dtype of the transformer (autocast): auto = bfloat16 on CUDA, float32 on the CPU; fp32 / bf16 / fp16
    (radar-generate's spellings) are float32 / bfloat16 / float16, as the manifest records them."""
    num_workers: Optional[int] = None
    """Number of workers sharing the shards (default: SLURM array size × torchrun/accelerate processes, or 1)."""
    worker_index: Optional[int] = None
    """This worker's index in [0, num_workers) (default: from SLURM_ARRAY_TASK_ID and the process rank).
    Worker I writes the shards s with s mod num_workers == I."""
    writer: Literal["process", "thread"] = "process"
    """Where shards are compressed and written while the next one is generated: a separate process (no
    competition for the GIL with the sampling loop) or a thread."""
    num_threads: Optional[int] = None
    """torch CPU threads of this process (default: torch's choice). Small models run best with 1."""
    progress: bool = True
    """Show progress: a bar on a terminal, plain lines in a log (radar_train.progress)."""

    def problems(self) -> list[str]:
        """Every problem of the run-level, plan and storage fields (the model's class count is checked
        when the plan is resolved)."""
        p = list(self.sampling.problems())
        if self.sampling.noise != "per_sample":
            p.append("sampling.noise must be per_sample for a cache (each record must be reproducible from "
                     "its label and seed alone)")
        if self.output is None:
            p.append(f"output is not set (give --output DIR or set `output:` in the config; {YAML_NULLS}: give the "
                     f"folder's full path)")
        if self.batch_size < 1:
            p.append(f"batch_size must be >= 1, got {self.batch_size}")
        pl, st = self.plan, self.storage
        if (pl.images_per_class is None) == (pl.num_samples is None):
            p.append("give exactly one of plan.images_per_class and plan.num_samples (set the other to null)")
        for name, v in (("plan.images_per_class", pl.images_per_class), ("plan.num_samples", pl.num_samples)):
            if v is not None and v < 1:
                p.append(f"{name} must be >= 1, got {v}")
        if pl.shard_size < 1:
            p.append(f"plan.shard_size must be >= 1, got {pl.shard_size}")
        if pl.base_seed < 0:
            p.append(f"plan.base_seed must be >= 0, got {pl.base_seed}")
        if st.chunk_size < 1:
            p.append(f"storage.chunk_size must be >= 1, got {st.chunk_size}")
        if not 1 <= st.compression_level <= 9:
            p.append(f"storage.compression_level must be in 1..9, got {st.compression_level}")
        if self.num_threads is not None and self.num_threads < 1:
            p.append(f"num_threads must be >= 1, got {self.num_threads}")
        if self.num_workers is not None and self.num_workers < 1:
            p.append(f"num_workers must be >= 1, got {self.num_workers}")
        return p
