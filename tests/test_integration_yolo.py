"""Real models: an offline ultralytics YOLOv5n export and the trained YOLOv8n shipped in nudenet."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxdepth.config import PruneConfig
from onnxdepth import api, models_zoo
from onnxdepth.importance import taylor_calibration
from onnxdepth.export.ultralytics import export_ultralytics
from onnxdepth.graph.io import load_model
from onnxdepth.params import count_params_proto
from onnxdepth.verify import signature, verify_model

pytestmark = pytest.mark.integration

NUDENET_SHAPES = {"images": (1, 3, 320, 320)}


@pytest.fixture(scope="module")
def yolov5n(tmp_path_factory) -> onnx.ModelProto:
    path = export_ultralytics("yolov5n.yaml", tmp_path_factory.mktemp("yolo") / "y.onnx", imgsz=320)
    assert path.is_file()
    return load_model(path)


@pytest.fixture(scope="module")
def nudenet() -> onnx.ModelProto:
    return load_model(models_zoo.nudenet_yolov8n())


def test_yolov5n_export(yolov5n):
    onnx.checker.check_model(yolov5n, full_check=True)
    sig = signature(yolov5n)
    assert sig["inputs"] == [("images", [1, 3, 320, 320])]
    assert len(sig["outputs"]) == 1
    assert sum(n.op_type == "Conv" for n in yolov5n.graph.node) == 76


def test_yolov5n_units(yolov5n):
    units = api.list_units(yolov5n)
    ids = [u.id for u in units]
    assert len(ids) == len(set(ids)) == 76
    reasons = Counter(u.excluded_reason for u in units)
    assert reasons == {None: 50, "graph head": 19, "changes spatial dims": 7}
    summary = api.units_summary(units)
    assert summary == {"candidates": 57, "excluded": {"changes spatial dims": 7}, "prunable": 50,
                       "prunable_reduced": 30, "head": 19, "user_excluded": 0}
    assert summary["prunable"] + sum(summary["excluded"].values()) == summary["candidates"]


def test_yolov5n_prune_02(yolov5n):
    result = api.prune_model(yolov5n, PruneConfig(0.2))
    assert result.reduction >= 0.2
    assert result.params_before == count_params_proto(yolov5n)
    assert result.params_after == count_params_proto(result.model)
    outputs = verify_model(result.model, yolov5n, {"images": (1, 3, 320, 320)})
    assert all(np.isfinite(o).all() for o in outputs)
    assert outputs[0].shape == tuple(signature(yolov5n)["outputs"][0][1])
    assert signature(result.model) == signature(yolov5n)
    remaining = {n.name for n in result.model.graph.node}
    assert not remaining & set(result.pruned_units)


def test_nudenet_units(nudenet):
    units = api.list_units(nudenet, input_shapes=NUDENET_SHAPES)
    assert len(units) == 64
    summary = api.units_summary(units)
    assert summary == {"candidates": 45, "excluded": {"changes spatial dims": 7}, "prunable": 38,
                       "prunable_reduced": 24, "head": 19, "user_excluded": 0}


def test_nudenet_prune_01(nudenet):
    result = api.prune_model(nudenet, PruneConfig(0.1, input_shapes=NUDENET_SHAPES))
    assert result.reduction >= 0.1
    assert result.params_after == count_params_proto(result.model)
    outputs = verify_model(result.model, nudenet, NUDENET_SHAPES)
    assert all(np.isfinite(o).all() for o in outputs)
    assert outputs[0].shape == (1, 22, 40 * 40 + 20 * 20 + 10 * 10)  # 4 box + 18 class rows, 3 strides
    # The dynamic dims stay dynamic: same names and symbolic shapes as the original.
    assert signature(result.model) == signature(nudenet)
    assert signature(result.model)["inputs"] == [("images", ["batch", 3, "height", "width"])]


@pytest.mark.integration
def test_taylor_importance_on_nudenet(monkeypatch):
    """Taylor scores from the onnx2torch sidecar drive Algorithm 9: the result is valid, and ascending
    keeps far more of the unpruned model's detections than descending (Table 4.5's finding)."""
    pytest.importorskip("onnx2torch")
    from onnxdepth.eval import fidelity_map, reference_images
    from onnxdepth.models_zoo import nudenet_yolov8n

    monkeypatch.setattr(taylor_calibration, "TAYLOR_IMAGES", 6)
    src = nudenet_yolov8n()
    model = onnx.load(str(src))
    shapes = {"images": (1, 3, 320, 320)}
    images = reference_images(6, 320, seed=1)
    maps = {}
    for ordering in ("ascending", "descending"):
        result = api.prune_model(model, PruneConfig(0.05, importance="taylor", ordering=ordering, input_shapes=shapes))
        assert result.reduction >= 0.05
        session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
        maps[ordering] = fidelity_map(session, str(src), images, threads=1)["map50"]
    assert maps["ascending"] > 0.8
    assert maps["ascending"] > maps["descending"] + 0.5
