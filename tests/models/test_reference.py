"""Our models against the official-code fixture (tests/fixtures/tiny_a), through the CLI and the API."""
import subprocess
import sys

import pytest
import torch

from radar_train.reference import Fixture, check_fixture


def test_check_reference_cli_passes_on_tiny_a(fixtures_dir):
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.check_reference", str(fixtures_dir / "tiny_a")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "reference: 8/8 cases pass"
    case_lines = [line for line in lines if not line.startswith("#")][:-1]
    assert len(case_lines) == 8 and all(" PASS " in line for line in case_lines)


def test_check_reference_fails_on_perturbed_weights(fixtures_dir, tmp_path):
    """The check can fail: the same fixture with one VAR weight nudged is caught."""
    import shutil

    import safetensors.torch as st

    for f in fixtures_dir.joinpath("tiny_a").iterdir():
        shutil.copy(f, tmp_path / f.name)
    sd = st.load_file(str(tmp_path / "var.safetensors"))
    sd["blocks.1.ffn.fc2.bias"] = sd["blocks.1.ffn.fc2.bias"] + 1e-3
    st.save_file(sd, str(tmp_path / "var.safetensors"))
    results, _ = check_fixture(tmp_path)
    failed = {r.name for r in results if not r.passed}
    assert "d" in failed and "a" not in failed and "b" not in failed


def _edited_cases(fixtures_dir, tmp_path, edit) -> None:
    """tiny_a in `tmp_path` with `edit(tensors)` applied to cases.safetensors."""
    import shutil

    import safetensors.torch as st

    for f in fixtures_dir.joinpath("tiny_a").iterdir():
        shutil.copy(f, tmp_path / f.name)
    tensors = st.load_file(str(tmp_path / "cases.safetensors"))
    edit(tensors)
    st.save_file(tensors, str(tmp_path / "cases.safetensors"))


def test_a_case_none_of_whose_outputs_is_stored_fails_naming_one(fixtures_dir, tmp_path):
    """A listed key that is not stored is skipped (a fixture may leave images out for size), but a case with none of
    its outputs stored compares nothing: it fails and says which is missing (it said "0 keys; worst -")."""
    _edited_cases(fixtures_dir, tmp_path, lambda t: t.pop("a.out.img"))
    results = {r.name: r for r in check_fixture(tmp_path)[0]}
    assert not results["a"].passed and results["a"].checked == 0
    assert "none of its outputs is in cases.safetensors (e.g. a.out.img)" in results["a"].line()
    assert all(r.passed for name, r in results.items() if name != "a")


def test_an_expected_output_holding_nan_fails_as_the_cases_worst_key(fixtures_dir, tmp_path):
    """NaN compares as no agreement: the line names that key with an infinite error (it named another key, whose
    small error contradicted the FAIL)."""
    def spoil(t):
        t["b.out.recon"].view(-1)[5] = float("nan")

    _edited_cases(fixtures_dir, tmp_path, spoil)
    results = {r.name: r for r in check_fixture(tmp_path)[0]}
    assert not results["b"].passed
    assert results["b"].worst_key == "b.out.recon" and results["b"].max_abs_err == float("inf")


def test_teacher_forcing_equals_cached_inference(fixtures_dir):
    """VAR.forward on the teacher-forcing input of greedy indices = the conditional half of the
    KV-cached sampling logits (and the unconditional half with the null label)."""
    fx = Fixture.load(fixtures_dir / "tiny_a")
    vqvae, var = fx.build_models(torch.device("cpu"))
    T = fx.tensors
    idx = [T[f"e_cfg4.out.idx.{si}"] for si in range(len(var.patch_nums))]
    x = vqvae.indices_to_var_input(idx)
    label = T["e.in.label"]
    with torch.no_grad():
        cond = var(label, x)
        uncond = var(torch.full_like(label, var.num_classes), x)
    raw = torch.cat([T[f"e_cfg4.dbg.raw_logits.{si}"] for si in range(len(var.patch_nums))], dim=1)
    B = label.shape[0]
    torch.testing.assert_close(cond, raw[:B], atol=2e-5, rtol=0)
    torch.testing.assert_close(uncond, raw[B:], atol=2e-5, rtol=0)


@pytest.mark.parametrize("case", ["e_cfg1", "e_cfg4"])
def test_fhat_from_indices_matches_sampling(fixtures_dir, case):
    fx = Fixture.load(fixtures_dir / "tiny_a")
    vqvae, var = fx.build_models(torch.device("cpu"))
    idx = [fx.tensors[f"{case}.out.idx.{si}"] for si in range(len(var.patch_nums))]
    with torch.no_grad():
        fh = vqvae.indices_to_fhat(idx, cumulative=True)
    for si, f in enumerate(fh):
        torch.testing.assert_close(f, fx.tensors[f"{case}.out.f_hat.{si}"], atol=3e-6, rtol=0)


def test_check_reference_cli_prints_a_multi_line_fixture_error_as_one_line(fixtures_dir, tmp_path, capsys):
    """A fixture error of a case named with a line break in cases.json goes through the entry points' one error
    path: one `error:` line on stderr naming the file (the name's line break written as `\\n`), exit status 2,
    before the models are built."""
    import json
    import shutil

    from radar_train.cli.check_reference import main

    fixture = tmp_path / "fixture"
    shutil.copytree(fixtures_dir / "tiny_a", fixture)
    cases = json.loads((fixture / "cases.json").read_text())
    cases["cases"] = {"bad\ncase": {"call": "nonsense()", "outputs": ["a.out.img"]}}
    (fixture / "cases.json").write_text(json.dumps(cases))
    with pytest.raises(SystemExit) as e:
        main([str(fixture)])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.splitlines()
    assert lines == [f"error: {fixture / 'cases.json'}: case 'bad\\ncase': unrecognised call 'nonsense()' (a case "
                     f"calls fhat_to_img, img_to_idxBl, idxBl_to_var_input, autoregressive_infer_cfg or var(...))"], err


def _drop_key(path, key):
    import json

    d = json.loads(path.read_text())
    del d[key]
    path.write_text(json.dumps(d))


def _drop_tensor(path, key):
    import safetensors.torch as st

    t = st.load_file(str(path))
    del t[key]
    st.save_file(t, str(path))


BROKEN_FIXTURES = {  # file broken -> how
    "truncated cases.safetensors": ("cases.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000])),
    "cases.safetensors without an input": ("cases.safetensors", lambda p: _drop_tensor(p, "a.in.f_hat")),
    "cases.json without cases": ("cases.json", lambda p: _drop_key(p, "cases")),
    "config.json without VAR_kwargs": ("config.json", lambda p: _drop_key(p, "VAR_kwargs")),
    "config.json a list": ("config.json", lambda p: p.write_text("[]\n")),
    "config.json binary": ("config.json", lambda p: p.write_bytes(bytes(range(128, 256)))),
    "config.json depth a string": ("config.json", lambda p: _edit(p, lambda d: d["VAR_kwargs"].update(depth="2"))),
    "config.json embed_dim a float": ("config.json", lambda p: _edit(p, lambda d: d["VAR_kwargs"].update(embed_dim=32.0))),
    "config.json patch_nums of words": ("config.json",
                                        lambda p: _edit(p, lambda d: d["VAR_kwargs"].update(patch_nums=["1", "2"]))),
    "cases.json kwargs a list": ("cases.json", lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"].update(kwargs=[1]))),
    "cases.json decode without inputs": ("cases.json", lambda p: _edit(p, lambda d: d["cases"]["a"].update(inputs=[]))),
    "cases.json cfg a word": ("cases.json", lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"]["kwargs"].update(cfg="x"))),
    # found by an adversarial pass: these ran (tracebacks, or a pass on a setting the sampler never saw)
    "cases.json an unknown call": ("cases.json", lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"].update(call="f()"))),
    "cases.json top_k below 0": ("cases.json",
                                 lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"]["kwargs"].update(top_k=-5))),
    "cases.json top_p above 1": ("cases.json",
                                 lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"]["kwargs"].update(top_p=1.5))),
    "cases.json B zero": ("cases.json", lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"]["kwargs"].update(B=0))),
    "cases.json more_smooth a word": ("cases.json", lambda p: _edit(
        p, lambda d: d["cases"]["g_more_smooth"]["kwargs"].update(more_smooth="no"))),
    "config.json phi_index_per_scale a number": ("config.json",
                                                 lambda p: _edit(p, lambda d: d.update(phi_index_per_scale=5))),
    "cases.safetensors an input of another shape": ("cases.safetensors",
                                                    lambda p: _set_tensor(p, "a.in.f_hat", torch.zeros(3, 5, 2, 2))),
    "cases.safetensors float labels": ("cases.safetensors",
                                       lambda p: _set_tensor(p, "d.in.label", torch.zeros(3))),
    "cases.safetensors integer images": ("cases.safetensors", lambda p: _set_tensor(
        p, "b.in.img", torch.zeros(3, 3, 64, 64, dtype=torch.long))),
    "cases.safetensors labels past the classes": ("cases.safetensors",
                                                  lambda p: _set_tensor(p, "d.in.label", torch.full((3,), 99))),
    "cases.safetensors token indices past the codebook": ("cases.safetensors", lambda p: _set_tensor(
        p, "c.in.idx.1", torch.full((3, 4), 10 ** 6))),
    # found by an adversarial pass of 2026-12-07: tracebacks, or lines naming no file
    "cases.json top_k null": ("cases.json",
                              lambda p: _edit(p, lambda d: d["cases"]["f_topk_topp"]["kwargs"].update(top_k=None))),
    "cases.json cfg null": ("cases.json",
                            lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"]["kwargs"].update(cfg=None))),
    "cases.json B null": ("cases.json", lambda p: _edit(p, lambda d: d["cases"]["e_cfg1"]["kwargs"].update(B=None))),
    "cases.safetensors token maps for fewer scales": ("cases.safetensors", lambda p: (
        _drop_tensor(p, "c.in.idx.3"), _drop_tensor(p, "c.in.idx.2"),
        _edit(p.parent / "cases.json", lambda d: d["cases"]["c"].update(inputs=["c.in.idx.0", "c.in.idx.1"])))),
    "cases.safetensors an image of another size": ("cases.safetensors", lambda p: _set_tensor(
        p, "b.in.img", torch.zeros(3, 3, 48, 48))),
    "config.json ch no multiple of the norm groups": ("config.json",
                                                      lambda p: _edit(p, lambda d: d["VQVAE_kwargs"].update(ch=48))),
    "config.json patch_nums not increasing": ("config.json", lambda p: _edit(
        p, lambda d: d["VAR_kwargs"].update(patch_nums=[1, 3, 2, 4]))),
}


def _set_tensor(path, key, value):
    import safetensors.torch as st

    t = st.load_file(str(path))
    t[key] = value
    st.save_file(t, str(path))


def _edit(path, change):
    import json

    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("case", list(BROKEN_FIXTURES))
def test_check_reference_names_the_broken_fixture_file(fixtures_dir, tmp_path, capsys, case):
    import shutil

    from radar_train.cli.check_reference import main

    name, breaks = BROKEN_FIXTURES[case]
    fixture = tmp_path / "fixture"
    shutil.copytree(fixtures_dir / "tiny_a", fixture)
    breaks(fixture / name)
    with pytest.raises(SystemExit) as e:
        main([str(fixture)])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {fixture / name}: "), err
