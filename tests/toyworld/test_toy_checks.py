"""What radar-toy refuses, and when: every recipe setting of `train` before any work (and a failed training
leaves the output folder as it was, but for the progress of its stages), a classifier file that is not one, sample seeds that do not fit in 64
bits, a combine input of the wrong shape."""
from __future__ import annotations

import copy
import json

import pytest
from cli_checks import assert_one_line_error, assert_unchanged, call_cli, snapshot

from radar_train.inputs import InputError
from radar_train.models import file_sha256
from radar_train.toyworld import measure as measure_mod
from radar_train.toyworld import recipe as recipe_mod
from radar_train.toyworld.classifier import ClassifierTrainConfig, ToyClassifier
from radar_train.toyworld.combine import run_combine
from radar_train.toyworld.masks import MasksConfig, run_masks
from radar_train.toyworld.measure import MeasureConfig, load_classifier, run_measure
from radar_train.toyworld.preset import CLASSIFIER_FILE, INFO_FILE, VAE_FILE, VAR_FILE, WEIGHTS_DIR
from radar_train.toyworld.recipe import ToyTrainConfig, train_all
from radar_train.toyworld.train_progress import PROGRESS_DIR
from radar_train.toyworld.train_var import VARTrainConfig
from radar_train.toyworld.train_vqvae import VQVAETrainConfig

TOY_FILES = (VAE_FILE, VAR_FILE, CLASSIFIER_FILE, INFO_FILE)


class ModelsLoaded(Exception):
    """Raised by a stand-in for load_models: the checks let the run get that far."""


@pytest.fixture
def no_models(monkeypatch):
    def load(*a, **k):
        raise ModelsLoaded

    monkeypatch.setattr(measure_mod, "load_models", load)


# ------------------------------------------------------------------------------------------------ radar-toy train
BAD_RECIPES = [
    (["--recipe.classifier.recon_share", "1.5"], "--recipe.classifier.recon_share"),
    (["--recipe.num_threads", "-1"], "--recipe.num_threads"),
    (["--recipe.vqvae.batch_size", "0"], "--recipe.vqvae.batch_size"),
    (["--recipe.world.image_size", "48"], "--recipe.world.image_size"),
    (["--recipe.num_train_images", "0"], "--recipe.num_train_images"),
    (["--recipe.num_heldout_images", "0"], "--recipe.num_heldout_images"),
    (["--recipe.var.steps", "0"], "--recipe.var.steps"),
    (["--recipe.classifier.steps", "-3"], "--recipe.classifier.steps"),
    (["--recipe.var.label_smoothing", "1.5"], "--recipe.var.label_smoothing"),
    (["--recipe.vqvae.learning_rate", "0"], "--recipe.vqvae.learning_rate"),
    (["--recipe.vqvae.codebook_ema_decay", "1.0"], "--recipe.vqvae.codebook_ema_decay"),
    (["--recipe.classifier.width", "0"], "--recipe.classifier.width"),
    (["--recipe.seed", "-1"], "--recipe.seed"),
    (["--recipe.world.supersample", "0"], "--recipe.world.supersample"),
    (["--recipe.world.size_range", "[0.4, 0.3]"], "--recipe.world.size_range"),
]


@pytest.mark.parametrize("argv,needle", BAD_RECIPES, ids=[a[0] for a, _ in BAD_RECIPES])
def test_train_refuses_a_bad_recipe_setting_before_any_work(tmp_path, monkeypatch, argv, needle):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / VAE_FILE).write_bytes(b"an earlier run")
    monkeypatch.setattr(recipe_mod, "make_bank", lambda *a, **k: pytest.fail("rendering started"))
    before = snapshot(tmp_path)
    code, err = call_cli("toy", ["train", "--output", "out", *argv], tmp_path)
    assert code == 2, err
    assert_one_line_error(err, needle)
    assert_unchanged(before, snapshot(tmp_path))


def test_the_recipe_is_checked_before_the_output():
    """A bad setting is reported even where the output would also be refused (the settings come first)."""
    cfg = ToyTrainConfig(num_threads=0, classifier=ClassifierTrainConfig(recon_share=-0.1),
                         vqvae=VQVAETrainConfig(batch_size=0), var=VARTrainConfig(grad_clip=0.0))
    problems = cfg.problems()
    for option in ("--recipe.num_threads", "--recipe.classifier.recon_share", "--recipe.vqvae.batch_size",
                   "--recipe.var.grad_clip"):
        assert any(p.startswith(option) for p in problems), (option, problems)
    assert ToyTrainConfig().problems() == []
    with pytest.raises(ValueError, match="--recipe.num_threads"):
        train_all(cfg, "never_written")


def _tiny(**kw) -> ToyTrainConfig:
    return ToyTrainConfig(num_threads=1, num_train_images=24, num_heldout_images=4,
                          vqvae=VQVAETrainConfig(steps=1, batch_size=4, warmup_steps=1),
                          var=VARTrainConfig(steps=1, batch_size=4, warmup_steps=1),
                          classifier=ClassifierTrainConfig(steps=1, batch_size=4, warmup_steps=1, recon_images=8), **kw)


def test_a_training_that_fails_late_leaves_the_output_as_it_was_but_for_its_progress(tmp_path, monkeypatch):
    """The earlier run's files stay byte-identical; the only new entry is the progress of the stages done
    (tests/toyworld/test_toy_resume.py: the same command goes on from there)."""
    out = tmp_path / "weights"
    info = train_all(_tiny(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(TOY_FILES)
    assert info["files"] == {name: file_sha256(out / name) for name in (VAE_FILE, VAR_FILE, CLASSIFIER_FILE)}
    before = snapshot(tmp_path)

    def fails(*a, **k):  # after the VQ-VAE and the VAR are trained
        raise RuntimeError("classifier training failed")

    monkeypatch.setattr(recipe_mod, "train_classifier", fails)
    with pytest.raises(RuntimeError, match="classifier training failed"):
        train_all(_tiny(seed=1), out)
    after = snapshot(tmp_path)
    progress = str(out / PROGRESS_DIR)
    assert_unchanged(before, {k: v for k, v in after.items() if not k.startswith(progress)})
    assert sorted(p.name for p in out.iterdir()) == sorted([*TOY_FILES, PROGRESS_DIR])


# ------------------------------------------------------------------------------------------------ radar-toy measure
def test_a_file_that_is_not_a_classifier_is_refused_naming_the_option_and_file(tmp_path):
    vae = WEIGHTS_DIR / VAE_FILE
    with pytest.raises(InputError, match=f"--setup.classifier {vae}: .*not a toy classifier"):
        load_classifier(str(vae))
    with pytest.raises(InputError, match="--setup.classifier .*nope.safetensors"):
        load_classifier(str(tmp_path / "nope.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(InputError, match="--setup.classifier .*junk.safetensors"):
        load_classifier(str(tmp_path / "junk.safetensors"))
    from radar_train.models import save_weights

    seven = ToyClassifier(num_classes=7).state_dict()  # a classifier of another class count
    save_weights(seven, tmp_path / "seven.safetensors")
    with pytest.raises(InputError, match="seven.safetensors: .*head.weight"):
        load_classifier(str(tmp_path / "seven.safetensors"))
    assert isinstance(load_classifier(), ToyClassifier)


def test_measure_checks_the_classifier_before_loading_the_models(no_models):
    with pytest.raises(InputError, match="--setup.classifier"):
        run_measure(MeasureConfig(classifier=str(WEIGHTS_DIR / VAE_FILE), methods=["fastvar:aggressive"]))
    with pytest.raises(ModelsLoaded):  # the shipped classifier passes
        run_measure(MeasureConfig(methods=["fastvar:aggressive"], images_per_class=1))


@pytest.mark.parametrize("seed,per_class", [(-1, 1), (2 ** 63 - 1, 1), (2 ** 64, 1), (2 ** 63 - 9, 1),
                                            (2 ** 63 - 100, 20)])
def test_sample_seeds_must_fit_in_64_bits(no_models, seed, per_class):
    cfg = MeasureConfig(base_seed=seed, images_per_class=per_class, methods=["fastvar:aggressive"])
    with pytest.raises(ValueError, match="--setup.base_seed"):
        run_measure(cfg)
    with pytest.raises(ValueError, match="--setup.base_seed"):
        run_masks(MasksConfig(base_seed=seed, images_per_class=per_class, families=["window"], budgets=[0.5]))


def test_the_last_seed_below_2_to_the_63_is_accepted(no_models):
    with pytest.raises(ModelsLoaded):
        run_measure(MeasureConfig(base_seed=2 ** 63 - 10 * 3, images_per_class=3, methods=["fastvar:aggressive"]))
    with pytest.raises(ModelsLoaded):
        run_measure(MeasureConfig(base_seed=0, images_per_class=3, methods=["fastvar:aggressive"]))


def test_too_few_fid_reference_images_are_refused_up_front(no_models):
    with pytest.raises(ValueError, match="--setup.fid_reference_images must be >= 2"):
        run_measure(MeasureConfig(fid_reference_images=1, methods=["fastvar:aggressive"]))
    with pytest.raises(ValueError, match="--setup.fid_reference_images must be >= 2"):
        run_masks(MasksConfig(fid_reference_images=1, families=["window"], budgets=[0.5]))


@pytest.mark.parametrize("argv,needle", [
    (["measure", "--setup.base_seed", str(2 ** 64)], "--setup.base_seed"),
    (["measure", "--setup.base_seed", str(2 ** 63 - 1)], "--setup.base_seed"),
    (["measure", "--setup.fid_reference_images", "1"], "--setup.fid_reference_images"),
    (["measure", "--setup.classifier", str(WEIGHTS_DIR / VAE_FILE)], "--setup.classifier"),
    (["masks", "--setup.base_seed", "-5"], "--setup.base_seed"),
], ids=["seed-2**64", "seed-2**63-1", "one-fid-reference", "vae-as-classifier", "masks-negative-seed"])
def test_measure_and_masks_print_one_error_line_and_write_nothing(tmp_path, no_models, argv, needle):
    before = snapshot(tmp_path)
    code, err = call_cli("toy", [*argv, "--output", "out"], tmp_path)
    assert code == 2, err
    assert_one_line_error(err, needle)
    assert_unchanged(before, snapshot(tmp_path))


# ------------------------------------------------------------------------------------------------ radar-toy combine
def _result() -> dict:
    row = {"class_accuracy": 0.5, "psnr_vs_vanilla": 20.0, "toy_fid": 30.0}
    return {"commit": "aaaaaaa", "date": "2026-01-01", "device": "cpu", "torch": "2", "command": "radar-toy measure",
            "config": {"base_seed": 1}, "num_samples": 10,
            "reconstruction": {"psnr_db": 30.0, "num_images": 4},
            "toy_fid": {"features": "f", "reference": {"kind": "toy renders", "world_seed": 2, "num_images": 12},
                        "num_samples": 10, "notes": [], "baselines": {"real_renders": 1.0}},
            "vanilla": {"class_accuracy": 0.9, "toy_fid": 10.0},
            "methods": {"fastvar:aggressive": {**row, "adapters": {"paa": {**row, "adapter_dir": "a", "g_mse": 0.3}}}}}


MALFORMED = [
    ("a-methods-row-that-is-a-list", lambda d: d["methods"].update({"fastvar:aggressive": [1, 2]}), "methods"),
    ("adapters-a-list", lambda d: d["methods"]["fastvar:aggressive"].update(adapters=[1]), "adapters"),
    ("an-adapter-row-that-is-a-number", lambda d: d["methods"]["fastvar:aggressive"]["adapters"].update(paa=3),
     "paa"),
    ("groups-a-string", lambda d: d["methods"]["fastvar:aggressive"].update(groups="x"), "groups"),
    ("no-reconstruction-psnr", lambda d: d["reconstruction"].pop("psnr_db"), "reconstruction"),
    ("reference-a-string", lambda d: d["toy_fid"].update(reference="renders"), "toy_fid"),
    ("baselines-a-list", lambda d: d["toy_fid"].update(baselines=[1]), "baselines"),
    ("a-metric-that-is-text", lambda d: d["vanilla"].update(class_accuracy="high"), "class_accuracy"),
    ("sharpness-a-list", lambda d: d.update(sharpness=[1]), "sharpness"),
    ("a-nan-metric", lambda d: d["vanilla"].update(toy_fid=float("nan")), "vanilla.toy_fid is NaN"),  # (first: named)
]


@pytest.mark.parametrize("edit,needle", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_combine_refuses_a_malformed_result_naming_the_file(tmp_path, edit, needle):
    good = tmp_path / "a.json"
    good.write_text(json.dumps(_result()))
    doc = copy.deepcopy(_result())
    edit(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    before = snapshot(tmp_path)
    for inputs in ([good, bad], [bad, good]):
        with pytest.raises(ValueError, match=f"--inputs: {bad}.*{needle}") as e:
            run_combine([str(p) for p in inputs], str(tmp_path / "out"))
        assert "\n" not in str(e.value)
    assert_unchanged(before, snapshot(tmp_path))
    code, err = call_cli("toy", ["combine", "--inputs", f"[{good}, {bad}]", "--output", "out"], tmp_path)
    assert code == 2
    assert_one_line_error(err, "--inputs", "bad.json")
    assert_unchanged(before, snapshot(tmp_path))


def test_the_well_formed_result_of_these_tests_combines(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(_result()))
    report = run_combine([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert report["methods"]["fastvar:aggressive"]["adapters"]["paa"]["g_mse"] == 0.3


def test_combine_with_overwrite_removes_an_earlier_measurements_grid(tmp_path):
    """(The grid of an earlier radar-toy measure in the folder stood beside the combined results as if it were
    theirs.)"""
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(_result()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "toyworld_grid.png").write_bytes(b"an earlier run's grid")
    with pytest.raises(ValueError, match="toyworld_grid.png"):
        run_combine([str(tmp_path / "a.json"), str(tmp_path / "b.json")], str(out))
    run_combine([str(tmp_path / "a.json"), str(tmp_path / "b.json")], str(out), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]


def test_a_masks_budget_keeps_its_digits():
    from radar_train.toyworld.masks import budget_text, setting_name

    assert budget_text(0.5) == "0.5" and budget_text(0.5000001) == "0.5000001" and budget_text(0.1 + 0.2) == "0.3"
    assert setting_name("window", 0.5) != setting_name("window", 0.5000001)


def test_an_adapter_folder_that_is_not_there_is_named_as_its_option_before_the_models_load(tmp_path, no_models,
                                                                                             monkeypatch):
    """(It was 'adapters: X is not an adapter folder', after the models had loaded.)"""
    import radar_train.models
    from radar_train.bench.tradeoff import TradeoffConfig, run_tradeoff

    monkeypatch.setattr(radar_train.models, "load_models", measure_mod.load_models)  # (no_models' stand-in)

    (tmp_path / "a_file").write_text("x")
    for folder, what in ((tmp_path / "nothere", "not found"), (tmp_path / "a_file", "not a folder")):
        adapters = {"fastvar:aggressive": {"paa": str(folder)}}
        with pytest.raises(FileNotFoundError, match=f"^--setup.adapters: {folder}: adapter folder {what}$"):
            run_measure(MeasureConfig(methods=["fastvar:aggressive"], adapters=adapters))
        with pytest.raises(FileNotFoundError, match=f"^--setup.adapters: {folder}: adapter folder {what}$"):
            run_tradeoff(TradeoffConfig(settings=["fastvar:aggressive"], adapters=adapters))


def test_a_method_spec_that_does_not_parse_names_setup_methods(tmp_path):
    before = snapshot(tmp_path)
    code, err = call_cli("toy", ["measure", "--setup.methods", '["fastvar:foo"]', "--output", "out"], tmp_path)
    assert code == 2, err
    assert_one_line_error(err, "--setup.methods: method spec 'fastvar:foo'")
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("v,digits,sign,scale,text", [
    (-1e-9, 2, False, 1, "0.00"), (-0.004999, 2, True, 1, "+0.00"), (-0.005001, 2, True, 1, "-0.01"),
    (-0.00004, 1, False, 100, "0.0"), (0.0, 3, False, 1, "0.000"), (-2.5, 2, False, 1, "-2.50"),
    (1.0, 2, True, 1, "+1.00"),
])
def test_report_numbers_print_no_minus_sign_on_a_value_that_rounds_to_zero(v, digits, sign, scale, text):
    from radar_train.formatting import fixed

    assert fixed(v, digits, sign=sign, scale=scale) == text
