"""Stage one: paired HQ/LQ latents in a sharded Zarr cache (radar-cache).

    schema.py    array names, FORMAT_VERSION, Manifest, read_manifest
    config.py    PlanArgs, StorageArgs, CacheArgs (the `radar-cache run` config)
    plan.py      sample i -> (label, seed), shards
    layout.py    complete / temporary shards of a cache folder
    writer.py    one shard: temporary Zarr group -> arrays + checksums -> rename
    workers.py   worker split (SLURM array × torchrun processes) and device
    generate.py  the radar-cache recipe (prepare_job / run_cache)
    status.py    status and verify
    reader.py    PairDataset, BlockShuffleSampler
    wds.py       WebDataset export and WdsPairs
    bench.py     radar-cache benchmark (ratios)
"""
from radar_train.cache.schema import FORMAT_VERSION, Manifest, read_manifest

__all__ = ["FORMAT_VERSION", "Manifest", "read_manifest"]
