"""benchmarks/probe_pieces.py, which the GPU run's `fused` probe times: every piece runs (here on the CPU, once), at
the shapes the probe uses, so that a broken piece is found before a scarce GPU run."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from probe_pieces import fastvar_pieces, stagevar_pieces  # noqa: E402


def test_every_piece_runs_and_the_alternatives_give_the_pieces_results():
    dev = torch.device("cpu")
    for pn, ratio in ((13, 0.5), (16, 0.75)):
        pieces = fastvar_pieces(64, pn, ratio, dev, rows=4)
        out = {name.split(":")[0].split(" (")[0]: fn() for name, fn in pieces.items()}
        assert len(out) == len(pieces) == 8
        topk, by_sort = (v for k, v in out.items() if k.startswith("select"))
        assert torch.equal(topk.values, by_sort.values)  # (distinct random scores: the same kept set)
        area, product = (v for k, v in out.items() if k.startswith("restore"))
        assert torch.equal(area, product)
    for pn in (13, 16):
        pieces = stagevar_pieces(64, pn, 4, dev, rows=2)
        out = [fn() for fn in pieces.values()]
        assert len(out) == 6
        assert torch.equal(out[4], out[5])  # the float32 restore by the area kernel and by the matrix product
        q, g = out[0]
        assert q.shape[0] == g.shape[0] == 2 and torch.isfinite(q).all()
