"""The fused ONNX graph cut in two: a features graph and a model graph (issue 11).

The staged pipeline runs the engineered-features part and the gradient-boosting part in separate
stages. Both graphs are cut out of the fused model (not re-converted), so composing them again
(`onnx.compose.merge_models`) gives the fused graph's computation node for node.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

FUSED_INPUT: Final = "features"
# NOTE: skl2onnx names the output of the pipeline's first step `variable`; it is renamed to
# ENGINEERED in both halves so the cut reads as what it is.
CUT_TENSOR: Final = "variable"
ENGINEERED: Final = "engineered"
FEATURES_FILE: Final = "credit_default.features.onnx"
MODEL_FILE: Final = "credit_default.model.onnx"
FUSED_FILE: Final = "credit_default.onnx"


class GraphSplitError(ValueError):
    """The fused model does not have the expected cut tensor."""


def _rename(model: Any, old: str, new: str) -> None:
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _copy_header(source: Any, target: Any, doc: str) -> None:
    target.ir_version = source.ir_version
    target.producer_name = source.producer_name
    target.producer_version = source.producer_version
    target.domain = source.domain
    target.model_version = source.model_version
    target.doc_string = doc
    del target.opset_import[:]
    used = {node.domain for node in target.graph.node}
    for entry in source.opset_import:
        if entry.domain in used or entry.domain == "":
            target.opset_import.add(domain=entry.domain, version=entry.version)


def split_fused(fused_bytes: bytes) -> tuple[bytes, bytes]:
    """(features graph, model graph) serialised, cut at the fused graph's features output."""
    import onnx
    import onnx.utils

    fused = onnx.load_from_string(fused_bytes)
    if not any(CUT_TENSOR in node.output for node in fused.graph.node):
        raise GraphSplitError(f"fused model has no tensor {CUT_TENSOR!r} to cut at")
    inferred = onnx.shape_inference.infer_shapes(fused)
    outputs = [o.name for o in fused.graph.output]
    extractor = onnx.utils.Extractor(inferred)
    features = extractor.extract_model([FUSED_INPUT], [CUT_TENSOR])
    model = extractor.extract_model([CUT_TENSOR], outputs)
    for part in (features, model):
        _rename(part, CUT_TENSOR, ENGINEERED)
        del part.graph.value_info[:]
    features.graph.name = "credit_default_features"
    model.graph.name = "credit_default_model"
    _copy_header(fused, features, "creditstream features: raw UCI fields in, engineered vector out")
    _copy_header(fused, model, "creditstream model: engineered vector in, P(default) in column 1")
    onnx.checker.check_model(features, full_check=True)
    onnx.checker.check_model(model, full_check=True)
    return features.SerializeToString(), model.SerializeToString()


def compose(features_bytes: bytes, model_bytes: bytes) -> bytes:
    """features ∘ model with onnx.compose (the proof the cut loses nothing)."""
    import onnx
    import onnx.compose

    merged = onnx.compose.merge_models(
        onnx.load_from_string(features_bytes),
        onnx.load_from_string(model_bytes),
        io_map=[(ENGINEERED, ENGINEERED)],
    )
    return merged.SerializeToString()


def _io(graph_bytes: bytes) -> dict[str, Any]:
    import onnx

    model = onnx.load_from_string(graph_bytes)

    def describe(values: Any) -> dict[str, list[int | None]]:
        return {
            v.name: [
                d.dim_value if d.HasField("dim_value") else None
                for d in v.type.tensor_type.shape.dim
            ]
            for v in values
        }

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def write_stage_graphs(models_dir: Path, card_file: str = "model_card.json") -> dict[str, Any]:
    """Cut the fused model in `models_dir`, write both graphs, list all three in the card.

    Deterministic: the same fused bytes give the same files and the same card section.
    """
    fused = (models_dir / FUSED_FILE).read_bytes()
    features, model = split_fused(fused)
    (models_dir / FEATURES_FILE).write_bytes(features)
    (models_dir / MODEL_FILE).write_bytes(model)
    section: dict[str, Any] = {
        "note": "features and model are cut out of the fused graph at its engineered-features "
        "tensor; onnx.compose of the two reproduces the fused outputs (tests/integration/"
        "test_stage_graphs.py)",
    }
    for role, name, data in (
        ("fused", FUSED_FILE, fused),
        ("features", FEATURES_FILE, features),
        ("model", MODEL_FILE, model),
    ):
        section[role] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), **_io(data)}
    card_path = models_dir / card_file
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["graphs"] = section
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return section
