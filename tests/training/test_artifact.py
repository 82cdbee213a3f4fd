"""Model files: save/load round trip, strict failures, ONNX and TorchScript parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dc_synthetic import exported_scores, sample_table, small_spec
from safetensors.torch import load_file, save_file

import deepcrossing
from deepcrossing.config import ModelConfig, TrainConfig
from deepcrossing.encoding import Encoder
from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256
from deepcrossing.model import DeepCrossing
from deepcrossing.training import artifact
from deepcrossing.training.export import export_model, flat_inputs, layout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    train = sample_table(300, seed=0)
    enc = Encoder(small_spec()).fit(train)
    torch.manual_seed(0)
    model = DeepCrossing(small_spec(), ModelConfig(width=16, hidden=(8,), norm="batch"), enc.cardinalities).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would show
        next(b for b in model.mlp.blocks if isinstance(b, torch.nn.BatchNorm1d)).running_mean.uniform_(-1, 1)
    artifact.save(folder, model, enc, TrainConfig(epochs=1), {"metrics": {"test": {"auc": 0.5}}})
    return folder, model, enc


def copy_of(folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_round_trip_gives_identical_scores(saved):
    folder, model, enc = saved
    loaded = deepcrossing.load(folder)
    table = sample_table(100, seed=5)
    expected = torch.sigmoid(model(enc.transform(table))).detach().numpy()
    np.testing.assert_array_equal(loaded.predict(table), expected.astype(np.float32))
    assert loaded.manifest["metrics"] == {"test": {"auc": 0.5}}
    assert loaded.spec == small_spec() and loaded.manifest["format_version"] == artifact.FORMAT_VERSION
    assert loaded.logits(enc.transform(table)).shape == (100,)
    assert not any(p.name.endswith(".pkl") for p in folder.iterdir())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("encoder"), "lacks key"),
    (lambda m: m.update(extra_stuff=1), "unknown key"),
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m["model_config"].update(mlp="deep"), "mlp"),
    (lambda m: m["encoder"]["tables"].pop("genre"), "tables"),
])
def test_strict_manifest(saved, tmp_path, edit, message):
    _edit_and_load(saved, tmp_path, edit, message)


def test_a_manifest_edited_to_a_huge_table_is_refused_before_allocating(saved, tmp_path):
    """The checksum covers the weights only: a manifest whose hashed feature says 10^12 buckets made load()
    allocate a 10^12-row table (RuntimeError from the allocator) before comparing it with the weights."""
    def huge(m):
        m["encoder"]["tables"]["movieTag"]["state"]["buckets"] = 10**12

    _edit_and_load(saved, tmp_path, huge, r"has shape \(8, 2\).*needs \(1000000000001, 2\)", "model.safetensors")


def _edit_and_load(saved, tmp_path, edit, message, named="manifest.json"):
    folder = copy_of(saved[0], tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=message) as info:
        deepcrossing.load(folder)
    assert named in str(info.value)


def test_missing_files_and_tampered_weights(saved, tmp_path):
    folder = copy_of(saved[0], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no model.safetensors"):
        deepcrossing.load(folder)
    folder2 = copy_of(saved[0], tmp_path / "b")
    state = load_file(str(folder2 / "model.safetensors"))
    state["scoring.linear.bias"] = state["scoring.linear.bias"] + 1
    save_file(state, str(folder2 / "model.safetensors"))
    with pytest.raises(InputError, match="weights_sha256"):
        deepcrossing.load(folder2)


@pytest.mark.parametrize("change", ["shape", "missing", "extra"])
def test_wrong_tensors_fail_with_the_tensor_name(saved, tmp_path, change):
    """A consistent but wrong weights file (checksum updated) still fails, naming the tensor."""
    folder = copy_of(saved[0], tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    if change == "shape":
        state["embedding.tables.movie.weight"] = torch.zeros(3, 6)
    elif change == "missing":
        del state["scoring.linear.weight"]
    else:
        state["surprise.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["weights_sha256"] = file_sha256(folder / "model.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    name = {"shape": "embedding.tables.movie.weight", "missing": "scoring.linear.weight",
            "extra": "surprise.weight"}[change]
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        deepcrossing.load(folder)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity(saved, tmp_path, fmt):
    folder = copy_of(saved[0], tmp_path)
    path = export_model(folder, fmt, tmp_path / f"m.{fmt}")
    loaded = deepcrossing.load(folder)
    batch = loaded.encoder.transform(sample_table(257, seed=7, n_users=60, n_movies=80))  # some unseen ids
    expected = loaded.logits(batch).numpy()
    inputs = flat_inputs(batch, layout(loaded))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["bag_names"] == ["userRecentPositives", "movieGenres", "userGenreCounts"]
    got = exported_scores(path, fmt, inputs, meta["inputs"])
    assert got.shape == (257,)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_export_rejects_unknown_format(saved):
    with pytest.raises(InputError, match="onnx, torchscript"):
        export_model(saved[0], "tflite")


def test_model_files_are_readable_like_any_new_file(saved, tmp_path):
    """model.safetensors and manifest.json were 0600 (safetensors' save_file and mkstemp create private
    files), so a service running as another user could not load a model trained with umask 022; the
    other files of the folder (metrics, plots) were 0644. Now every file gets 0666 less the umask."""
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    folder = saved[0]
    wanted = 0o666 & ~mask
    export_model(folder, "torchscript", tmp_path / "m.pt")
    for path in (folder / "model.safetensors", folder / "manifest.json", tmp_path / "m.pt.json"):
        assert os.stat(path).st_mode & 0o777 == wanted, path


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_model_whose_table_has_only_pad_and_oov(tmp_path, fmt):
    """`export --model M` crashed with `IndexError: index out of range in self` for a model trained on a log
    without movies.csv (its genre table holds only the PAD and OOV rows): the tracing batch used ids 0..2."""
    from deepcrossing.config import Feature, FeatureSpec

    spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4, min_count=10**9),
                        Feature("userRatingCount", "numeric", "user", transform="standardize")))
    train = sample_table(200, seed=0)
    enc = Encoder(spec).fit(train)
    assert enc.cardinalities == {"movieId": 2}
    torch.manual_seed(0)
    model = DeepCrossing(spec, ModelConfig(width=8, hidden=(4,)), enc.cardinalities).eval()
    folder = artifact.save(tmp_path / "model", model, enc, TrainConfig(epochs=1))
    path = export_model(folder, fmt, tmp_path / f"m.{fmt}")
    loaded = deepcrossing.load(folder)
    batch = loaded.encoder.transform(train.slice(0, 9))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    got = exported_scores(path, fmt, flat_inputs(batch, layout(loaded)), meta["inputs"])
    np.testing.assert_allclose(got, loaded.logits(batch).numpy(), atol=1e-5, rtol=0)
