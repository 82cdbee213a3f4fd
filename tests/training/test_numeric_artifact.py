"""Numeric embeddings in model files: the manifest round trip (bin edges, frequencies) and ONNX/TorchScript
parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dc_synthetic import exported_scores, numeric_spec, sample_table

import deepcrossing
from deepcrossing.config import ModelConfig, TrainConfig
from deepcrossing.encoding import Encoder
from deepcrossing.errors import InputError
from deepcrossing.model import DeepCrossing
from deepcrossing.training import artifact
from deepcrossing.training.export import export_model, flat_inputs, layout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("numeric-model")
    train = sample_table(300, seed=0)
    enc = Encoder(numeric_spec()).fit(train)
    torch.manual_seed(0)
    model = DeepCrossing(numeric_spec(), ModelConfig(width=16, hidden=(8,)), enc.cardinalities).eval()
    artifact.save(folder, model, enc, TrainConfig(epochs=1))
    return folder, model, enc


def test_round_trip_keeps_edges_and_frequencies(saved):
    folder, model, enc = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    edges = manifest["encoder"]["numeric"]["userAvgRating"]["edges"]
    assert edges == enc.numeric_["userAvgRating"].edges_ and len(edges) >= 3
    assert manifest["spec"]["features"][3]["transform"] == "periodic"
    loaded = deepcrossing.load(folder)
    torch.testing.assert_close(loaded.model.numeric.embeddings["movieAvgRating"][0].frequencies,
                               model.numeric.embeddings["movieAvgRating"][0].frequencies, atol=0, rtol=0)
    table = sample_table(100, seed=5)
    expected = torch.sigmoid(model(enc.transform(table))).detach().numpy()
    np.testing.assert_array_equal(loaded.predict(table), expected.astype(np.float32))


@pytest.mark.parametrize("damage", ["no_numeric", "extra_edge", "fewer_bins"])
def test_damaged_numeric_state_fails_naming_the_manifest(saved, tmp_path, damage):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    state = manifest["encoder"]["numeric"]
    if damage == "no_numeric":
        del manifest["encoder"]["numeric"]
    elif damage == "extra_edge":
        state["userAvgRating"]["edges"] = [*state["userAvgRating"]["edges"], -1.0]
    else:
        state["movieRatingCount"]["n_bins"] = 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError) as info:
        deepcrossing.load(folder)
    assert "manifest.json" in str(info.value)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity_with_numeric_embeddings(saved, tmp_path, fmt):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    path = export_model(folder, fmt, tmp_path / f"m.{fmt}")
    loaded = deepcrossing.load(folder)
    table = sample_table(257, seed=7, n_users=60, n_movies=80)
    batch = loaded.encoder.transform(table)
    expected = loaded.logits(batch).numpy()
    inputs = flat_inputs(batch, layout(loaded))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["numeric_names"] == ["userAvgRating", "movieAvgRating", "movieRatingCount", "userRatingCount"]
    assert meta["inputs"][-4:] == [f"numeric_{n}" for n in meta["numeric_names"]]
    got = exported_scores(path, fmt, inputs, meta["inputs"])
    assert got.shape == (257,)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.std(got) > 1e-4
