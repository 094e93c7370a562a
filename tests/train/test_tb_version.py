"""radar-train validate's tb/validate/version_N/ is claimed when N is chosen (radar_train/train/tb_version.py)."""

from lightning.pytorch.loggers import TensorBoardLogger

from radar_train.train.tb_version import OwnVersionTensorBoardLogger


def test_two_loggers_started_together_take_different_versions(tmp_path):
    """Lightning's logger makes its folder only when it first writes: two started together took the same N."""
    plain = [TensorBoardLogger(save_dir=tmp_path / "plain", name="validate") for _ in range(2)]
    assert plain[0].version == plain[1].version == 0  # (the race, as Lightning's own logger has it)
    (tmp_path / "tb" / "validate" / "version_0").mkdir(parents=True)
    (tmp_path / "tb" / "validate" / "version_x").mkdir()
    a, b = (OwnVersionTensorBoardLogger(save_dir=tmp_path / "tb", name="validate") for _ in range(2))
    assert (a.version, b.version) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "tb" / "validate").iterdir()) == [
        "version_0", "version_1", "version_2", "version_x"]
    assert OwnVersionTensorBoardLogger(save_dir=tmp_path / "tb", name="validate", version=7).version == 7
    assert not (tmp_path / "tb" / "validate" / "version_7").exists()  # (a version given is Lightning's to make)


def test_a_logger_that_never_writes_makes_no_folder(tmp_path):
    """The folder is claimed when the version is first asked for (by the first write), not when the logger is made."""
    OwnVersionTensorBoardLogger(save_dir=tmp_path / "tb", name="validate")
    assert not (tmp_path / "tb").exists()
