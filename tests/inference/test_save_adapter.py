"""save_adapter (the adapter-folder API) replaces only an adapter folder: a folder of the user's own, or a file,
is refused and left as it was."""
from __future__ import annotations

import pytest

from radar_train.export.adapter import is_adapter_dir, save_adapter
from radar_train.outputs import OutputError


@pytest.fixture(scope="module")
def peft_model():
    from radar_train.bench.pipeline import random_adapter
    from radar_train.models import load_models

    vqvae, _, _, _ = load_models("tiny", with_var=False)
    return random_adapter(vqvae.latent_decoder(), rank=2, seed=0)[0]


def test_a_folder_of_the_users_own_is_refused_and_kept(peft_model, tmp_path):
    notes = tmp_path / "thesis"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="out_dir .*thesis is a folder that is not an adapter folder"):
        save_adapter(peft_model, notes, {})
    assert [p.name for p in notes.iterdir()] == ["notes.txt"] and (notes / "notes.txt").read_text() == "mine"
    (tmp_path / "a file").write_text("mine too")
    with pytest.raises(OutputError, match="is an existing file"):
        save_adapter(peft_model, tmp_path / "a file", {})
    assert (tmp_path / "a file").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "thesis"]  # no temporary left


def test_an_adapter_folder_or_an_empty_one_is_written(peft_model, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):  # the last: replaces an adapter
        assert is_adapter_dir(save_adapter(peft_model, out, {"note": str(out)}))


@pytest.mark.parametrize("error", ["peft", "safetensors"])
def test_a_full_disk_is_an_os_error_naming_the_adapter_folder(peft_model, tmp_path, monkeypatch, error):
    """radar-train export on a full disk said `No space left on device (errno 28)` (peft's write) or safetensors'
    `Error while serializing: I/O error: ... (os error 28)`, naming no file; the earlier adapter stays."""
    from safetensors import SafetensorError

    out = save_adapter(peft_model, tmp_path / "adapter", {"note": "earlier"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*a, **k):
        if error == "peft":
            raise OSError(28, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(type(peft_model), "save_pretrained", full)
    with pytest.raises(OSError) as e:
        save_adapter(peft_model, out, {"note": "new"})
    assert (e.value.errno, e.value.filename) == (28, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
