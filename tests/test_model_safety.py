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


NESTED = "[" * 100_000 + "]" * 100_000  # json.loads alone: RecursionError


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda c: c["gru"].update(hidden=200_000), "hidden must be <=", id="hidden_200k"),  # 480 GB
    pytest.param(lambda c: c["gru"].update(emb_dim=10**9), "emb_dim must be <=", id="emb_dim_1e9"),  # 204 GB
    pytest.param(lambda c: c["gru"].update(n_items=10**12), "n_items must be <=", id="n_items_1e12"),
    pytest.param(lambda c: c["gru"].update(hidden=16_000, emb_dim=16_000), "parameters", id="product"),
])
def test_model_sizes_are_bounded_before_anything_is_allocated(model_dir, tmp_path, edit, message):
    import resource

    bad = _copy(model_dir, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    edit(config)
    (bad / "config.json").write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelLoadError, match=message):
        Recommender.load(bad, device="cpu")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"the loader allocated {grown_mb:.0f} MB before refusing"


@pytest.mark.parametrize("target, content", [
    ("config.json", '{"gru": ' + NESTED + "}"),
    ("items.json", '{"item_ids": ' + NESTED + "}"),
    ("config.json", "\ufeff{}"),
    ("items.json", '{"item_ids": ["a"], "texts": [{"nested": 1}]}'),
])
def test_model_json_is_parsed_bounded(model_dir, tmp_path, target, content):
    bad = _copy(model_dir, tmp_path)
    (bad / target).write_text(content, encoding="utf-8")
    with pytest.raises(ModelLoadError):
        Recommender.load(bad, device="cpu")


def test_oversize_model_json_is_refused_unread(model_dir, tmp_path, monkeypatch):
    from stream_rec.model import artifacts

    bad = _copy(model_dir, tmp_path)
    monkeypatch.setattr(artifacts, "MAX_ITEMS_JSON_BYTES", 100)
    with pytest.raises(ModelLoadError, match="oversize"):
        Recommender.load(bad, device="cpu")


def test_evaluate_reports_a_bad_model_as_one_clear_error(model_dir, tmp_path):
    import subprocess
    import sys

    bad = _copy(model_dir, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    config["gru"]["hidden"] = 200_000
    (bad / "config.json").write_text(json.dumps(config))
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},item-{i},{1_000_000 + i}\n"
                                                               for u in range(3) for i in range(4)))
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"item-{i},t{i}\n" for i in range(12)))
    out = subprocess.run([sys.executable, "-m", "stream_rec", "evaluate", "--model", str(bad), "--events-file",
                          str(events), "--items-file", str(items)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "hidden must be <=" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


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
