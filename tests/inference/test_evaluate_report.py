"""radar-eval's report when the gap is undefined: strict JSON, and the markdown says why."""
import json

import torch

from radar_train.inference.evaluate import _finite, markdown_table
from radar_train.train.metrics import RestorationStats


def test_an_accelerated_decode_equal_to_the_vanilla_one_gives_no_nan_in_the_report():
    t = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stats = RestorationStats(torch.device("cpu"))
    stats.update(t, t.clone(), t.clone())  # accelerated == vanilla: MSE(baseline) = 0
    m = stats.compute()
    r = {"num_pairs": 2, "shards": [1], "cache": "c", "held_out": True, "psnr_baseline": m["psnr_baseline"],
         "psnr_adapted": m["psnr_student"], "ssim_baseline": m["ssim_baseline"], "ssim_adapted": m["ssim_student"],
         "gap_closed": _finite(m["gap_closed_mse"]), "delta_psnr": m["delta_psnr"], "delta_ssim": m["delta_ssim"]}
    assert r["gap_closed"] is None
    json.dumps(r, allow_nan=False)  # what a strict reader accepts
    assert "G_mse = 1 − MSE(adapted)/MSE(baseline): undefined: MSE(baseline) is 0" in markdown_table(r)
