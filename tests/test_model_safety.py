"""Model directories are untrusted input too: the loader validates them and never unpickles anything.

A model directory can come from a shared drive or an artifact store; a tampered one must fail with a
clear :class:`ModelLoadError` naming the problem, and a pickle planted where the weights should be must
not run (safetensors holds tensors only; nothing in the loader calls ``pickle``/``torch.load``).
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from stream_rec.model.recommender import ModelLoadError, Recommender

torch.set_num_threads(1)
PACKAGE = Path(__file__).resolve().parents[1] / "stream_rec"


class _Exploit:
    """Unpickling this creates a directory: proof that the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    Recommender.untrained([f"item-{i}" for i in range(12)], device="cpu").save(out)
    Recommender.load(out, device="cpu")  # the pristine copy loads
    return out


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(model_dir, dst)
    return dst


@pytest.mark.parametrize("target", ["weights.safetensors", "text_vectors.safetensors"])
def test_pickle_in_place_of_weights_is_rejected_and_never_run(model_dir, tmp_path, target):
    bad = _copy(model_dir, tmp_path)
    marker = tmp_path / "pwned"
    (bad / target).write_bytes(pickle.dumps({"weight": _Exploit(marker)}))
    torch.save({"weight": _Exploit(marker)}, bad / "model.pt")  # a .pt lying next to it is ignored
    with pytest.raises(ModelLoadError, match="safetensors"):
        Recommender.load(bad, device="cpu")
    assert not marker.exists(), "the loader executed a pickle"


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda c: c["gru"].update(n_items=c["gru"]["n_items"] + 5), "items", id="n_items"),
    pytest.param(lambda c: c["gru"].update(hidden="__import__('os').system('true')"), "gru", id="hidden_str"),
    pytest.param(lambda c: c["gru"].update(hidden=-4), "gru", id="hidden_negative"),
    pytest.param(lambda c: c["gru"].update(surprise=1), "gru", id="unknown_field"),
    pytest.param(lambda c: c.pop("gru"), "gru", id="no_gru"),
    pytest.param(lambda c: c.update(format=99), "format", id="future_format"),
])
def test_tampered_config_is_a_clear_error(model_dir, tmp_path, edit, message):
    bad = _copy(model_dir, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    edit(config)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        Recommender.load(bad, device="cpu")


@pytest.mark.parametrize("damage", ["missing_weights", "not_json", "not_a_dir", "items_mismatch", "truncated"])
def test_broken_model_dir_is_a_clear_error(model_dir, tmp_path, damage):
    bad = _copy(model_dir, tmp_path)
    if damage == "missing_weights":
        (bad / "weights.safetensors").unlink()
    elif damage == "not_json":
        (bad / "config.json").write_text("{'gru': eval('1')}")
    elif damage == "not_a_dir":
        bad = bad / "VERSION"
    elif damage == "items_mismatch":
        (bad / "items.json").write_text(json.dumps({"item_ids": ["a", "b"]}))
    elif damage == "truncated":
        raw = (bad / "weights.safetensors").read_bytes()
        (bad / "weights.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError):
        Recommender.load(bad, device="cpu")


UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("torch", "load"),
                ("yaml", "load"), ("dill", "load"), ("dill", "loads"), ("joblib", "load")}


def test_package_has_no_unsafe_deserialisation_calls():
    """A backstop for the tests above: no eval/exec and no pickle-family loads anywhere in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in {"eval", "exec"}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {fn.id}()")
            if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) and (fn.value.id, fn.attr) in UNSAFE_CALLS:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {fn.value.id}.{fn.attr}()")
    assert not found, found
