"""Detection mAP against labels (YOLO txt and COCO json), on the packaged trained YOLOv8n (nudenet).

Labels are the model's own confident detections written in each format: scored against them, the model
itself must reach mAP50 ~1, and both label formats must give the same number."""

from __future__ import annotations

import json
import shutil

import helpers
import numpy as np
import pytest

from onnxdepth.errors import InvalidArgumentError
from onnxdepth.eval.detection import _photo_paths, decode_ultralytics, letterbox
from onnxdepth.eval.detection_labels import labelled_map, load_yolo_labels


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    import onnxruntime as ort
    from PIL import Image

    model = helpers.packaged_model_or_skip("nudenet-yolov8n")  # skips only without the nudenet package
    root = tmp_path_factory.mktemp("labelled")
    images = root / "images"
    images.mkdir()
    for path in _photo_paths():
        shutil.copy(path, images / path.name)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    coco = {"images": [], "annotations": [], "categories": [{"id": 10 + c} for c in range(18)]}
    for k, path in enumerate(sorted(images.iterdir())):
        array, scale, (pad_x, pad_y) = letterbox(path, 320)
        det = decode_ultralytics(session.run(None, {"images": array[None]})[0][0], conf=0.25)
        width, height = Image.open(path).size
        rows = []
        coco["images"].append({"id": k, "file_name": path.name})
        for x1, y1, x2, y2, _, cls in det:
            x1, x2 = (x1 - pad_x) / scale, (x2 - pad_x) / scale
            y1, y2 = (y1 - pad_y) / scale, (y2 - pad_y) / scale
            rows.append(f"{int(cls)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                        f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
            coco["annotations"].append({"image_id": k, "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                        "category_id": 10 + int(cls)})
        (images / f"{path.stem}.txt").write_text("\n".join(rows) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    assert coco["annotations"], "the model must detect something on the packaged photos"
    return model, images, root / "coco.json"


def test_model_against_its_own_labels_yolo_and_coco(labelled):
    model, images, coco = labelled
    yolo = labelled_map(model, images, imgsz=320)
    assert yolo["map50"] > 0.95 and yolo["label_boxes"] > 0
    from_coco = labelled_map(model, images, coco, imgsz=320)
    assert from_coco["map50"] == pytest.approx(yolo["map50"], abs=1e-6)
    assert from_coco["label_boxes"] == yolo["label_boxes"]


def test_yolo_label_rows_become_pixel_corners(tmp_path):
    from PIL import Image

    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("3 0.5 0.5 0.2 0.4\n")
    boxes = load_yolo_labels([tmp_path / "a.png"], tmp_path)[0]
    # centre (100, 50), size 40 x 40 -> corners (80, 30) - (120, 70), class 3.
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70, 3]], atol=1e-4)
    (tmp_path / "a.txt").write_text("3 0.5 x\n")
    with pytest.raises(InvalidArgumentError, match="a.txt:1"):
        load_yolo_labels([tmp_path / "a.png"], tmp_path)


def test_cli_detection_with_labels_and_errors(labelled, cli, tmp_path):
    model, images, coco = labelled
    code, out, err = cli("eval", model, "--task", "detection", "--image-dir", images, "--labels", coco, "--json")
    assert code == 0, err
    assert json.loads(out)["map50"] > 0.95
    code, _, err = cli("eval", model, "--task", "detection")
    assert code == 1 and err.count("\n") == 1 and "--image-dir" in err
    code, _, err = cli("eval", model, "--task", "detection", "--image-dir", tmp_path)
    assert code == 1 and "no images" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = cli("eval", model, "--task", "detection", "--image-dir", images, "--labels", bad)
    assert code == 1 and err.count("\n") == 1 and "COCO" in err
