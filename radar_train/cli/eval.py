"""radar-eval: restoration metrics of a PAA adapter on held-out cache shards (JSON + markdown table)."""
from __future__ import annotations

import sys
from typing import Optional, Union

from jsonargparse import CLI

from radar_train.inference.evaluate import LpipsArgs


def evaluate(cache: str, adapter: str, output: str = "outputs/eval", shards: Optional[Union[str, list[int]]] = None,
             vae_checkpoint: Optional[str] = None, batch_size: int = 32, num_workers: int = 0, device: str = "auto",
             lpips: LpipsArgs = LpipsArgs()) -> int:
    """Restoration metrics of an adapter on held-out cache shards.

    PSNR / SSIM (LPIPS with local weights) of decoder(LQ) and decoder+adapter(LQ) against decoder(HQ),
    gap closed and harmlessness, on held-out shards of a cache.

    Args:
        cache: cache folder written by radar-cache run.
        adapter: adapter folder exported by radar-train.
        output: folder for eval.json and eval.md.
        shards: shards to evaluate, e.g. "8-9" (default: the adapter's validation shards of this cache).
        vae_checkpoint: the VQ-VAE file, if the cache's recorded path is not valid here.
        batch_size: pairs per batch.
        num_workers: DataLoader workers.
        device: cuda, cpu, or auto.
        lpips: local LPIPS weight files (both needed); without them LPIPS is not computed.
    """
    import torch

    from radar_train.config import parse_int_list
    from radar_train.inference.evaluate import evaluate_restoration, markdown_table, write_report

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    shard_list = None if shards is None else parse_int_list(shards, "--shards")
    print(f"radar-eval: adapter {adapter} on {cache} (shards {shard_list or 'from the adapter'}) -> {output}")
    result = evaluate_restoration(cache, adapter, shard_list, batch_size, dev, vae_checkpoint, lpips, num_workers)
    js, md = write_report(result, output)
    print(markdown_table(result))
    print(f"wrote {js} and {md}")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.models.checkpoint import CheckpointError

    try:
        sys.exit(CLI(evaluate, args=argv, as_positional=False))
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
