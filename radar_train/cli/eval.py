"""radar-eval: restoration metrics of a PAA adapter on held-out cache shards (JSON + markdown table)."""
from __future__ import annotations

from typing import Optional, Union

from jsonargparse import CLI

from radar_train.inference.evaluate import LpipsArgs


def evaluate(cache: str, adapter: str, output: str = "outputs/eval", shards: Optional[Union[str, list[int]]] = None,
             vae_checkpoint: Optional[str] = None, batch_size: int = 32, num_workers: int = 0, device: str = "auto",
             lpips: LpipsArgs = LpipsArgs(), allow_train_shards: bool = False, distance_bins: int = 4,
             overwrite: bool = False) -> int:
    """Restoration metrics of an adapter on held-out cache shards.

    PSNR / SSIM (LPIPS with local weights) of decoder(LQ) and decoder+adapter(LQ) against decoder(HQ),
    gap closed and harmlessness, on held-out shards of a cache, also in bins of the latent distance
    d = ‖f_HQ − f_LQ‖/‖f_HQ‖ (how far acceleration moved each pair). Shards the adapter was trained on (its
    radar_config.yaml) are refused unless --allow_train_shards. An existing eval.json / eval.md in the
    output folder is replaced only with --overwrite; an output inside the cache or the adapter is refused.

    Args:
        cache: cache folder written by radar-cache run.
        adapter: adapter folder exported by radar-train.
        output: folder for eval.json and eval.md.
        shards: shards to evaluate, e.g. "8-9" (default: the adapter's validation shards of this cache).
        vae_checkpoint: the VQ-VAE file, if the cache's recorded path is not valid here.
        batch_size: pairs per batch.
        num_workers: DataLoader workers.
        device: cuda, cpu, or auto.
        lpips: local LPIPS weight files: --lpips.vgg (torchvision's VGG16) turns LPIPS on; --lpips.heads
            defaults to torchmetrics' copy of the lpips package's v0.1 heads.
        allow_train_shards: evaluate shards the adapter was trained on anyway (a warning; eval.json records
            them in train_shard_overlap and says held_out false; null for an adapter whose metadata does not
            record its training shards).
        distance_bins: equal-count bins of the pairs by latent distance d, each with its own metrics
            (eval.json by_latent_distance, a table in eval.md; at most one per pair); 0: none.
        overwrite: replace eval.json / eval.md of an earlier run in the output folder.
    """
    from radar_train.cli.common import check_device, check_positive, run_until_stopped, stopped_status
    from radar_train.config import parse_int_list
    from radar_train.inference.evaluate import REPORT_FILES, evaluate_restoration, markdown_table, write_report
    from radar_train.inputs import check_dir, check_file
    from radar_train.outputs import check_output_dir

    check_positive(batch_size=batch_size)
    check_positive(num_workers=num_workers, minimum=0)
    check_positive(distance_bins=distance_bins, minimum=0)
    dev = check_device(device)
    shard_list = None if shards is None else parse_int_list(shards, "--shards")
    check_dir(cache, "--cache folder")
    check_dir(adapter, "--adapter folder")
    for name, path in (("--vae_checkpoint", vae_checkpoint), ("--lpips.vgg", lpips.vgg), ("--lpips.heads", lpips.heads)):
        if path is not None:
            check_file(path, f"{name} file")
    if lpips.vgg and not lpips.heads:
        from radar_train.train.lpips import _shipped_heads_checked

        _shipped_heads_checked("--lpips.heads")
    check_output_dir(output, REPORT_FILES, "--output", {"--cache": cache, "--adapter": adapter,
                                                         "--vae_checkpoint": vae_checkpoint}, overwrite)
    from radar_train.config import format_int_list

    shown = format_int_list(shard_list) if shard_list else "from the adapter"
    print(f"radar-eval: adapter {adapter} on {cache} (shards {shown}) -> {output}")
    result = run_until_stopped("radar-eval", lambda: evaluate_restoration(  # (SIGTERM ended it without a line)
        cache, adapter, shard_list, batch_size, str(dev), vae_checkpoint, lpips, num_workers,
        allow_train_shards=allow_train_shards, progress=True, distance_bins=distance_bins),
        ends_command=True)  # (then the report is written and moved into place)
    if result is None:
        return stopped_status()
    js, md = write_report(result, output, overwrite)
    print(markdown_table(result))
    print(f"wrote {js} and {md}")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-eval", lambda args: CLI(evaluate, args=args, as_positional=False, exit_on_error=False), argv)


if __name__ == "__main__":
    main()
