"""An adapter folder replaced while a command reads it (another run's `radar-train export --overwrite` into it, a
fit's end replacing RUN/final: `replace_dir` swaps a finished folder in whole). radar-eval chose its shards and its
held-out verdict from one adapter's record and measured the other's weights; radar-train merge wrote one adapter's
weights under the other's record: both exit 0, without a word. Now one error line: run the command again."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_checks import assert_one_line_error, call_cli
from radar_train.inputs import InputError
from radar_train.outputs import replace_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def adapters(trained_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the trained adapter, and another copy to swap in (a new folder, as an export makes)."""
    ad, other = tmp_path / "ad", tmp_path / "other"
    shutil.copytree(trained_run["adapter"], ad)
    shutil.copytree(trained_run["adapter"], other)
    return ad, other


def _swapping_before(monkeypatch, module, name: str, ad: Path, other: Path) -> None:
    """`module.name` swaps `other` in at `ad` (once) before it runs: the other run's export, in the middle."""
    real = getattr(module, name)

    def swapped(*a, **k):
        if other.exists():
            replace_dir(other, ad)
        return real(*a, **k)

    monkeypatch.setattr(module, name, swapped)


def test_radar_eval_refuses_an_adapter_replaced_between_its_record_and_its_weights(trained_run, adapters, tmp_path,
                                                                                     monkeypatch):
    import radar_train.inference.evaluate as evaluate

    ad, other = adapters
    _swapping_before(monkeypatch, evaluate, "load_decoders", ad, other)
    code, err = call_cli("eval", ["--cache", str(trained_run["cache"]), "--adapter", str(ad), "--output",
                                  str(tmp_path / "eval"), "--device", "cpu"], trained_run["work"])
    assert code == 2, err
    assert_one_line_error(err, f"adapter {ad} was replaced while it was read", "run the command again")
    assert not (tmp_path / "eval").exists()
    monkeypatch.undo()
    code, err = call_cli("eval", ["--cache", str(trained_run["cache"]), "--adapter", str(ad), "--output",
                                  str(tmp_path / "eval"), "--device", "cpu"], trained_run["work"])
    assert code == 0, err


def test_merge_and_the_pipeline_refuse_an_adapter_replaced_while_they_read_it(trained_run, adapters, tmp_path,
                                                                            monkeypatch):
    import radar_train.export.adapter as adapter
    import radar_train.export.merged as merged

    ad, other = adapters
    _swapping_before(monkeypatch, merged, "load_adapter", ad, other)  # (between the record and the weights)
    code, err = call_cli("train", ["merge", "--adapter", str(ad), "--output", str(tmp_path / "m.pth")], tmp_path)
    assert code == 2, err
    assert_one_line_error(err, f"adapter {ad} was replaced while it was read")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]
    monkeypatch.undo()

    shutil.copytree(ad, other)
    _swapping_before(monkeypatch, adapter, "_from_pretrained", ad, other)  # (inside load_adapter: config vs weights)
    from radar_train.config import AccelArgs, ModelArgs
    from radar_train.inference import PipelineArgs, RadarPipeline

    def pipeline():
        return RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), accel=AccelArgs("fastvar"),
                                                      adapter=str(ad), device="cpu"))

    with pytest.raises(InputError, match="was replaced while it was read"):
        pipeline()
    monkeypatch.undo()
    pipe = pipeline()
    pipe.fingerprint()
    shutil.copytree(ad, other)
    replace_dir(other, ad)  # (replaced after loading: the files hashed for a run's progress are not those loaded)
    with pytest.raises(InputError, match="was replaced while it was read"):
        pipe.fingerprint()
