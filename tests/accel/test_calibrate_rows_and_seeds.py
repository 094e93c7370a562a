"""radar-accel calibrate: the rows a StageVAR rank calibration measures (the branch StageVAR runs, methods.md
§3.2(c)), and calibrations that follow --seed with official noise as with per_sample noise."""
import re

import pytest
import torch
import yaml

from radar_train.accel import StageVAR
from radar_train.accel.base import AccelMethod, AccelRun
from radar_train.accel.calibrate import calibrate_ranks, calibrate_sca
from radar_train.accel.stagevar import rank_for
from radar_train.config import SamplingConfig
from radar_train.sampling import NextScaleSampler

SCALES = (6, 8)


def _sampler(tiny_models, noise="per_sample"):
    vqvae, var = tiny_models
    return NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=2.0, top_k=0, top_p=0.0, noise=noise))


@pytest.mark.parametrize("what", ["stagevar", "sca"])
def test_official_noise_calibration_follows_the_seed(tiny_models, what):
    """Before, official noise dropped the seeds and drew from torch's global generator: two runs at --seed 0
    differed (and the SCA header's seeds were not what was drawn)."""
    s = _sampler(tiny_models, "official")
    nc = tiny_models[1].num_classes

    def run(seed):
        if what == "stagevar":
            return calibrate_ranks(s, SCALES, 0.96, 4, 2, nc, seed)[0]
        return {k: v for k, d in calibrate_sca(s, SCALES, 16, 1.0, 4, 2, nc, seed)[0].items() for k, v in d.items()}

    first, again, other = run(0), run(0), run(1)

    def same(a, b):
        return all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)

    assert same(first, again)
    assert not same(first, other)


class _RowProbe(AccelMethod):
    """An independent reading of the refinement scales' block inputs: rank ratios of the rows `half` keeps."""

    name = "row-probe"

    def __init__(self, half, patch_nums):
        self.half, self.patch_nums, self.ratios = half, patch_nums, {}

    def start(self, ctx):
        return _RowRun(self, ctx)


class _RowRun(AccelRun):
    def __init__(self, probe, ctx):
        super().__init__(ctx)
        self.p = probe

    def begin_scale(self, si, rows):
        super().begin_scale(si, rows)
        return self if self.p.patch_nums[si] in SCALES else None

    def block(self, j, x, run):
        B = self.ctx.batch_size
        rows = {"cond": x[:B], "uncond": x[B:], "off": x}[self.p.half]
        r = rank_for(torch.linalg.svdvals(rows.float()), 0.96).float() / x.shape[1]
        self.p.ratios.setdefault((self.p.patch_nums[self.si], j), []).append(r)
        return run(x)


def test_rank_calibration_measures_the_rows_of_single_branch(tiny_models):
    """methods.md §3.2(c): the ranks of the single-branch rows; before, the conditional rows whatever
    single_branch said (uncond and off runs used the cond table)."""
    s = _sampler(tiny_models)
    var = tiny_models[1]
    tables = {}
    for half in ("cond", "uncond", "off"):
        probe = _RowProbe(half, list(var.patch_nums))
        for a in (0, 2):
            s.sample(torch.arange(a, a + 2) % var.num_classes, seeds=[a, a + 1], accel=probe)
        expected = {pn: [float(torch.cat(probe.ratios[(pn, j)]).mean()) for j in range(var.depth)] for pn in SCALES}
        got = calibrate_ranks(s, SCALES, 0.96, 4, 2, var.num_classes, 0, single_branch=half)[0]
        assert got == {pn: pytest.approx(v, abs=1e-5) for pn, v in expected.items()}, half
        tables[half] = got
    assert tables["cond"] != tables["uncond"]


def test_a_rank_file_of_another_branch_is_refused():
    m = dict(scales=((6, 0.96), (8, 0.96)), rank_ratios=((6, (0.3,) * 4), (8, (0.3,) * 4)),
             rank_ratios_file="ranks.yaml")
    pns = (1, 2, 3, 4, 6, 8)
    problems = StageVAR(single_branch="uncond", rank_ratios_branch="cond", **m).problems(pns, 4)
    assert problems == ["stagevar rank ratios ranks.yaml were calibrated on the rows of single_branch cond, not "
                        "uncond; calibrate them with `radar-accel calibrate --accel.method stagevar "
                        "--accel.stagevar.single_branch uncond`"]
    assert StageVAR(single_branch="off", rank_ratios_branch="off", **m).problems(pns, 4) == []
    assert StageVAR(single_branch="off", **m).problems(pns, 4) == []  # not recorded: not compared


def test_calibrate_records_the_branch_it_measured(tmp_path):
    from radar_train.cli.accel import main

    out = tmp_path / "ranks.yaml"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--model.preset", "tiny", "--accel.stagevar.single_branch", "uncond", "--num_samples", "2",
              "--batch_size", "2", "--device", "cpu", "--output", str(out)])
    assert e.value.code == 0
    assert yaml.safe_load(out.read_text())["single_branch"] == "uncond"


def test_the_calibration_an_alpha_without_its_table_is_sent_to_runs_on_that_config(tmp_path):
    """α 0.9 at the refined scales is refused for want of a table of that α, naming `radar-accel calibrate
    --accel.method stagevar --alpha 0.9`; that command, on the same config, was refused with the same line. It
    writes the table, which the config then takes."""
    from radar_train.accel import ConfigError, build_accel
    from radar_train.cli.accel import main
    from radar_train.config import AccelArgs, StageVARArgs
    from radar_train.models import get_preset

    config = tmp_path / "sv.yaml"
    config.write_text("model:\n  preset: tiny\naccel:\n  method: stagevar\n  stagevar:\n    scales: {6: 0.9, 8: 0.9}\n")
    var = get_preset("tiny").var
    with pytest.raises(ConfigError, match=r"`radar-accel calibrate --accel.method stagevar --alpha 0\.9`"):
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(scales={6: 0.9, 8: 0.9})), var.patch_nums, var.depth)
    out = tmp_path / "ranks.yaml"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--config", str(config), "--accel.method", "stagevar", "--alpha", "0.9", "--num_samples",
              "2", "--batch_size", "2", "--device", "cpu", "--output", str(out)])
    assert e.value.code == 0 and sorted(yaml.safe_load(out.read_text())["ratios"]) == [6, 8]
    method = build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(scales={6: 0.9, 8: 0.9}, rank_ratios=str(out))),
                         var.patch_nums, var.depth)
    assert dict(method.scales) == {6: 0.9, 8: 0.9}


@pytest.mark.parametrize("doc,branch,refused", [
    ({"single_branch": "uncond"}, "uncond", False),
    ({"single_branch": "uncond"}, "cond", True),
    ({"single_branch": "off"}, "uncond", True),
    ({"written_by": "radar-accel calibrate"}, "cond", False),  # an older calibration: it measured the cond rows
    ({"written_by": "radar-accel calibrate"}, "off", True),
    ({}, "uncond", False),  # a hand-written table: nothing measured, nothing compared
])
def test_build_refuses_a_rank_file_of_another_branch(tmp_path, doc, branch, refused):
    from radar_train.accel import ConfigError, build_accel
    from radar_train.config import AccelArgs, StageVARArgs

    f = tmp_path / "ranks.yaml"
    f.write_text(yaml.safe_dump({"alpha": 0.96, "ratios": {6: [0.3] * 4, 8: [0.3] * 4}, **doc}))
    args = AccelArgs("stagevar", stagevar=StageVARArgs(scales={6: 0.96, 8: 0.96}, rank_ratios=str(f),
                                                       single_branch=branch))
    if refused:
        with pytest.raises(ConfigError, match=f"ranks.yaml were calibrated on the rows of single_branch "
                                              f"{doc.get('single_branch', 'cond')}, not {branch}") as e:
            build_accel(args, (1, 2, 3, 4, 6, 8), 4)
        assert "\n" not in str(e.value)
    else:
        assert build_accel(args, (1, 2, 3, 4, 6, 8), 4).single_branch == branch


def test_a_rank_file_with_an_unknown_branch_is_not_a_rank_file(tmp_path):
    from radar_train.accel.stagevar import load_rank_file

    f = tmp_path / "ranks.yaml"
    f.write_text(yaml.safe_dump({"alpha": 0.96, "single_branch": "both", "ratios": {6: [0.3] * 4}}))
    with pytest.raises(ValueError, match="ranks.yaml: not a stagevar rank-ratio file .*single_branch 'both'"):
        load_rank_file(f)


@pytest.mark.parametrize("ratios, reason", [
    ({6: [True, 0.5, 0.4, 0.3]}, "rank ratio True is not a number"),  # (float(True) is 1.0)
    ({6: ["0.5", 0.5, 0.4, 0.3]}, "rank ratio '0.5' is not a number"),
    ({6.5: [0.5] * 4}, "scale 6.5 is not a side"),  # (int(6.5) is 6)
    ({True: [0.5] * 4}, "scale True is not a side"),
])
def test_a_rank_file_with_values_of_other_types_is_not_a_rank_file(tmp_path, ratios, reason):
    from radar_train.accel.stagevar import load_rank_file

    f = tmp_path / "ranks.yaml"
    f.write_text(yaml.safe_dump({"alpha": 0.96, "ratios": ratios}))
    with pytest.raises(ValueError, match=f"ranks.yaml: not a stagevar rank-ratio file \\(TypeError: "
                                         f"{re.escape(reason)}"):
        load_rank_file(f)


def test_a_rank_file_may_quote_its_scale_sides(tmp_path):
    from radar_train.accel.stagevar import load_rank_file

    f = tmp_path / "ranks.yaml"
    f.write_text(yaml.safe_dump({"alpha": 0.96, "ratios": {"6": [0.5, 0.5, 0.4, 1], 8: [0.25] * 4}}))
    assert load_rank_file(f).ratios == {6: [0.5, 0.5, 0.4, 1.0], 8: [0.25] * 4}
