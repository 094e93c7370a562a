"""Format versions of an adapter folder: radar_config.yaml's format_version must be one this radar_train reads
(1 to RADAR_CONFIG_VERSION, an integer); anything else is refused in one line naming the file, the version found
and the versions this radar_train reads, by check_adapter, by RadarPipeline and by radar-generate."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from radar_train.export.adapter import RADAR_CONFIG, RADAR_CONFIG_VERSION, check_adapter, save_adapter
from radar_train.inputs import InputError

NEWER = RADAR_CONFIG_VERSION + 98
NOT_WRITTEN = [0, -1, True, "1", 1.5, None]  # never written by radar_train (hand-edited or foreign files)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A tiny-preset adapter with random LoRA weights, written by save_adapter with metadata that names no
    format_version (save_adapter gives it the current one)."""
    from radar_train.bench.pipeline import random_adapter
    from radar_train.models import load_models

    vqvae, _, vae_id, _ = load_models("tiny", with_var=False)
    peft_model, _ = random_adapter(vqvae.latent_decoder(), rank=2, seed=0)
    return save_adapter(peft_model, tmp_path_factory.mktemp("adapter") / "final", {"base": {"vae": vae_id.to_dict()}})


def _with_version(adapter: Path, where: Path, version=..., drop: bool = False) -> Path:
    """A copy of `adapter` at `where` whose radar_config.yaml has `version` (or, with drop, no format_version)."""
    shutil.copytree(adapter, where)
    meta = yaml.safe_load((where / RADAR_CONFIG).read_text())
    if drop:
        meta.pop("format_version")
    else:
        meta["format_version"] = version
    (where / RADAR_CONFIG).write_text(yaml.safe_dump(meta, sort_keys=False))
    return where


def _expected(version) -> str:
    if version == NEWER:
        return f"format_version {version} is newer than this radar_train reads (1): upgrade radar_train"
    return f"format_version {version!r} is not a format version radar_train wrote (this radar_train reads 1)"


def test_save_adapter_writes_the_current_version_and_the_adapter_reads(adapter):
    import radar_train

    meta = yaml.safe_load((adapter / RADAR_CONFIG).read_text())
    assert meta["format_version"] == RADAR_CONFIG_VERSION and meta["radar_train"] == radar_train.__version__
    assert check_adapter(adapter)["format_version"] == RADAR_CONFIG_VERSION


def test_training_writes_the_version_the_adapter_reader_reads():
    from radar_train.train.module import META_VERSION

    assert META_VERSION == RADAR_CONFIG_VERSION


@pytest.mark.parametrize("version", [NEWER, *NOT_WRITTEN], ids=repr)
def test_an_adapter_of_a_version_this_code_does_not_know_is_refused_naming_it(adapter, tmp_path, version):
    d = _with_version(adapter, tmp_path / "a", version)
    with pytest.raises(InputError) as e:
        check_adapter(d)
    assert str(e.value) == f"{d / RADAR_CONFIG}: adapter metadata {_expected(version)}"


def test_an_adapter_without_a_format_version_is_refused(adapter, tmp_path):
    d = _with_version(adapter, tmp_path / "a", drop=True)
    with pytest.raises(InputError) as e:
        check_adapter(d)
    assert str(e.value) == (f"{d / RADAR_CONFIG}: adapter metadata has no format_version (radar_train writes one; "
                            f"this radar_train reads 1)")


def test_the_pipeline_refuses_an_adapter_of_a_newer_version(adapter, tmp_path):
    from radar_train.config import AccelArgs, ModelArgs
    from radar_train.inference import PipelineArgs, RadarPipeline

    d = _with_version(adapter, tmp_path / "a", NEWER)
    with pytest.raises(InputError) as e:
        RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), accel=AccelArgs("fastvar"), adapter=str(d),
                                               device="cpu"))
    assert str(e.value) == f"{d / RADAR_CONFIG}: adapter metadata {_expected(NEWER)}"


def test_radar_generate_refuses_an_adapter_of_a_newer_version_in_one_line_writing_nothing(adapter, tmp_path):
    d = _with_version(adapter, tmp_path / "a", NEWER)
    res = subprocess.run([sys.executable, "-m", "radar_train.cli.generate", "--adapter", str(d), "--classes", "0",
                          "--seeds", "0", "--output", str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True)
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {d / RADAR_CONFIG}: adapter metadata {_expected(NEWER)}"], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()
