"""radar_train.inputs: every read failure of a user's file is one line naming it."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from radar_train.inputs import InputError, load_safetensors, load_torch, read_json, read_yaml


@pytest.fixture
def files(tmp_path):
    torch.save({"w": torch.ones(64, 64)}, tmp_path / "good.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:300])
    save_file({"w": torch.ones(64, 64)}, str(tmp_path / "good.safetensors"))
    (tmp_path / "trunc.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes()[:200])
    (tmp_path / "junk.yaml").write_bytes(bytes(range(128, 256)))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("reader,name,message", [
    (load_torch, "trunc.pt", "truncated or not a torch checkpoint"),
    (load_torch, "empty.pt", "checkpoint"),
    (load_torch, "folder", "is a folder, expected a file"),
    (load_torch, "missing.pt", "not found"),
    (load_safetensors, "trunc.safetensors", "truncated or not a safetensors file"),
    (load_safetensors, "junk.yaml", "safetensors"),
    (read_yaml, "junk.yaml", "not a text file"),
    (read_yaml, "list.yaml", "not a YAML mapping"),
    (read_yaml, "bad.yaml", "not valid YAML (line"),
    (read_json, "bad.json", "not valid JSON (line 1"),
])
def test_a_read_failure_is_one_line_naming_the_file(files, reader, name, message):
    with pytest.raises(InputError) as e:
        reader(files / name)
    text = str(e.value)
    assert text.startswith(f"{files / name}: ") and message in text and "\n" not in text


def test_good_files_read(files):
    assert torch.equal(load_torch(files / "good.pt")["w"], torch.ones(64, 64))
    assert torch.equal(load_safetensors(files / "good.safetensors")["w"], torch.ones(64, 64))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_named(files):
    p = files / "good.pt"
    p.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied"):
            load_torch(p)
    finally:
        p.chmod(0o644)


def test_torch_files_are_read_with_weights_only(tmp_path):
    from fractions import Fraction  # a class weights_only=True refuses to build from a pickle

    torch.save({"obj": Fraction(1, 3)}, tmp_path / "pickle.pt")
    with pytest.raises(InputError, match=r"pickle.pt: checkpoint holds a Python object \(fractions\.Fraction\) "
                                         r"besides tensors") as e:
        load_torch(tmp_path / "pickle.pt")
    assert "\n" not in str(e.value) and "save the tensors (a state_dict) instead" in str(e.value)


@pytest.mark.parametrize("content,says", [
    (b"\x00\x01random bytes", "is not a file torch.save wrote (neither a zip archive nor a pickle of protocol 2"),
    (b"hello\n", "is not a file torch.save wrote"),
    (b"(dp0\nS'a'\np1\nI1\ns.", "is not a file torch.save wrote"),  # a pickle of protocol 0
])
def test_a_file_torch_did_not_write_says_what_it_is_in_one_line(tmp_path, content, says):
    """torch's own text for these speaks of weights_only and runs over lines: random bytes, text, an old pickle."""
    (tmp_path / "f.pt").write_bytes(content)
    with pytest.raises(InputError) as e:
        load_torch(tmp_path / "f.pt")
    assert str(e.value).startswith(f"{tmp_path / 'f.pt'}: checkpoint {says}") and "\n" not in str(e.value)
    assert "PyTorch 2.6" not in str(e.value)


def test_a_device_is_not_read_as_a_file():
    """(/dev/zero given as an input was read until the memory ran out.)"""
    from radar_train.inputs import check_file

    with pytest.raises(InputError, match=r"^/dev/zero: adapter file is a device, expected a file$"):
        check_file("/dev/zero", "adapter file")


def test_a_missing_input_starting_with_a_tilde_no_shell_expanded_names_the_expanded_path(monkeypatch):
    from radar_train.inputs import check_dir, check_file

    monkeypatch.setenv("HOME", "/home/someone")
    with pytest.raises(InputError) as e:
        check_dir("~/caches/x", "cache folder")
    assert str(e.value) == "~/caches/x: cache folder not found ('~' is not expanded here: give /home/someone/caches/x)"
    with pytest.raises(InputError) as e:
        load_torch("~/w/var_d16.pth")
    assert str(e.value).endswith("not found ('~' is not expanded here: give /home/someone/w/var_d16.pth)")
    with pytest.raises(InputError) as e:
        check_file("w/~x.pth")  # (a `~` inside a name is a name)
    assert str(e.value) == "w/~x.pth: file not found"
