"""Export a model folder to ONNX or TorchScript, over flat tensor inputs.

Inputs of the exported graph, in order (B is dynamic):
    ``dense``  (B, n_dense) float32, columns in ``Encoder.dense_names`` order;
    ``sparse`` (B, n_sparse) int64, one column per single-valued embedded feature (``sparse_names``);
    one ``(B, L_f) int64`` id matrix per multi-valued feature (``bag_names``), 0 = padding;
    one ``(B, L_f) float32`` weight matrix per weighted bag (``weighted_names``);
    one ``(B, W_f) float32`` numeric-embedding input per ``ple``/``ple_tree``/``periodic`` feature
    (``numeric_names``: ``Batch.numeric``, the encoder's piecewise-linear encoding or standardized value).
Output: ``logits`` (B,). The sidecar ``<file>.json`` lists those names so a scorer can build the inputs
with :func:`flat_inputs` from an encoded :class:`Batch`.

Example:
    >>> path = export_model("runs/ml-small", "onnx")          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepcrossing.atomic import write_text_atomic
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.numeric import input_width, is_numeric_embedding
from deepcrossing.errors import InputError
from deepcrossing.model.deep_crossing import FlatDeepCrossing
from deepcrossing.outputs import check_output_file
from deepcrossing.training.artifact import MANIFEST, WEIGHTS, LoadedModel, load

FORMATS = ("onnx", "torchscript")


def layout(loaded: LoadedModel) -> dict[str, list[str]]:
    """Names of the flat inputs: ``sparse_names``, ``bag_names``, ``weighted_names``, ``numeric_names``,
    ``dense_names``."""
    spec = loaded.spec
    weighted = [f.name for f in spec.features if f.is_bag and f.weights_from is not None]
    return {
        "dense_names": loaded.encoder.dense_names,
        "sparse_names": [f.name for f in spec.features if f.embedded and not f.is_bag],
        "bag_names": [f.name for f in spec.features if f.is_bag],
        "weighted_names": weighted,
        "numeric_names": [f.name for f in spec.features if is_numeric_embedding(f)],
    }


def flat_inputs(batch: Batch, names: dict[str, list[str]]) -> tuple[Tensor, ...]:
    """An encoded batch as the exported graph's positional inputs (see the module docstring)."""
    n = len(batch)
    sparse = (torch.stack([batch.sparse[k] for k in names["sparse_names"]], dim=1)
              if names["sparse_names"] else torch.zeros((n, 0), dtype=torch.int64))
    bags = [batch.bags[k] for k in names["bag_names"]]
    weights = [batch.bag_weights[k] for k in names["weighted_names"]]
    numeric = [batch.numeric[k] for k in names.get("numeric_names", [])]
    return (batch.dense, sparse, *bags, *weights, *numeric)


def flat_module(loaded: LoadedModel) -> FlatDeepCrossing:
    names = layout(loaded)
    return FlatDeepCrossing(loaded.model, names["sparse_names"], names["bag_names"],
                            names["weighted_names"], tuple(names["numeric_names"])).eval()


def _example_batch(loaded: LoadedModel, n: int = 4) -> Batch:
    """A small valid batch (ids 0..2, or fewer where a table has fewer rows; zero numerics) to trace the graph
    with."""
    spec, enc = loaded.spec, loaded.encoder
    g = torch.Generator().manual_seed(0)
    # a table of a tiny train set can have only its PAD and OOV rows (no genre seen: 2 rows)
    top = {f: min(3, enc.cardinalities.get(t.name, 3)) for t in spec.tables().values() for f in t.features}
    sparse = {f.name: torch.randint(0, top.get(f.name, 3), (n,), generator=g)
              for f in spec.features if f.embedded and not f.is_bag}
    bags = {f.name: torch.randint(0, top.get(f.name, 3), (n, enc.bag_len_[f.name]), generator=g)
            for f in spec.features if f.is_bag}
    weights = {f.name: torch.rand(n, enc.bag_len_[f.name], generator=g)
               for f in spec.features if f.is_bag and f.weights_from is not None}
    numeric = {f.name: torch.rand(n, input_width(f), generator=g)
               for f in spec.features if is_numeric_embedding(f)}
    return Batch(torch.randn(n, len(enc.dense_names), generator=g), sparse, bags, weights, torch.zeros(n), numeric)


def is_export(path: Path) -> bool:
    """True when ``path`` (an exported file or its ``.json``) was written by :func:`export_model`: the sidecar
    names one of our formats and the weights it came from."""
    sidecar = path if path.name.endswith(".json") else path.with_name(path.name + ".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") in FORMATS and "weights_sha256" in meta


def export_model(model_dir: str | Path, fmt: str, out: str | Path | None = None, *,
                 overwrite: bool = False) -> Path:
    """Export ``model_dir`` as ONNX (``model.onnx``) or TorchScript (``model.torchscript.pt``).

    Args:
        model_dir: a folder written by ``deepcrossing train``.
        fmt: ``onnx`` or ``torchscript``.
        out: output file (default inside ``model_dir``); its folder must exist. A file there (or at
            ``<out>.json``) that is not an export of ours is refused unless ``overwrite``; the model's own
            files never are replaced.
        overwrite: replace a file that is not an export of ours.

    Returns:
        The written file; a ``<file>.json`` next to it names the inputs.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}", field="format")
    out = Path(out) if out is not None else Path(model_dir) / ("model.onnx" if fmt == "onnx"
                                                               else "model.torchscript.pt")
    inputs = [Path(model_dir) / MANIFEST, Path(model_dir) / WEIGHTS]
    for target in (out, out.with_name(out.name + ".json")):
        check_output_file(target, is_ours=is_export, what=f"{fmt} export", inputs=inputs, overwrite=overwrite)
    loaded = load(model_dir)
    module = flat_module(loaded)
    names = layout(loaded)
    example = flat_inputs(_example_batch(loaded), names)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    input_names = (["dense", "sparse"] + [f"bag_{k}" for k in names["bag_names"]]
                   + [f"weight_{k}" for k in names["weighted_names"]]
                   + [f"numeric_{k}" for k in names["numeric_names"]])
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(module, example, check_trace=False)  # type: ignore[no-untyped-call]
                traced.save(str(tmp))
            else:
                dynamic = {name: {0: "batch"} for name in input_names}
                dynamic["logits"] = {0: "batch"}
                torch.onnx.export(module, example, str(tmp), input_names=input_names, output_names=["logits"],
                                  dynamic_axes=dynamic, dynamo=False, opset_version=17)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    meta: dict[str, Any] = {"format": fmt, "inputs": input_names, "output": "logits", **names,
                            "bag_len": loaded.encoder.bag_len_,
                            "weights_sha256": loaded.manifest["weights_sha256"]}
    write_text_atomic(out.with_name(out.name + ".json"), json.dumps(meta, indent=1))
    return out
