"""Detection evaluation: letterbox, ultralytics-head decoding + NMS, COCO-style AP, fidelity mAP."""

from __future__ import annotations

import math

import helpers
import numpy as np
import pytest

from onnxdepth.errors import InvalidArgumentError, UnsupportedModelError
from onnxdepth.eval.detection import (
    average_precision,
    box_iou,
    decode_ultralytics,
    fidelity_map,
    letterbox,
    nms,
    reference_images,
)


def _truth(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _perfect(truth: np.ndarray, score: float = 0.9) -> np.ndarray:
    """Predictions equal to the truth boxes, [k, 6]."""
    return np.concatenate([truth[:, :4], np.full((truth.shape[0], 1), score), truth[:, 4:5]], axis=1)


# ------------------------------------------------------------------------------------------------ NMS

def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def test_nms_removes_duplicate_keeps_disjoint():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7])
    # box 0 overlaps the better box 1 with IoU 81/119 = 0.68 > 0.45; box 2 is disjoint
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    # a looser threshold keeps the duplicate
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    # per-class: a duplicate of another class survives
    assert nms(boxes, scores, 0.45, classes=np.array([0, 1, 0])).tolist() == [1, 0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_decode_hand_made_output():
    nc, anchors = 3, 5
    out = np.zeros((4 + nc, anchors), dtype=np.float32)
    # cx, cy, w, h per anchor
    out[:4] = np.array([[20, 21, 100, 20, 200],
                        [20, 21, 100, 20, 200],
                        [10, 10, 20, 10, 40],
                        [10, 10, 20, 10, 40]], dtype=np.float32)
    out[4:] = np.array([[0.9, 0.6, 0.0, 0.1, 0.2],    # class 0
                        [0.1, 0.0, 0.3, 0.8, 0.1],    # class 1
                        [0.0, 0.1, 0.7, 0.0, 0.05]],  # class 2
                       dtype=np.float32)
    det = decode_ultralytics(out, conf=0.25, iou=0.45)
    # anchor 1 (class 0, 0.6) is a duplicate of anchor 0 (class 0, 0.9): removed; anchor 3 overlaps
    # anchor 0 exactly but is class 1: kept; anchor 4 (best 0.2) is under conf
    expected = np.array([[15, 15, 25, 25, 0.9, 0],
                         [15, 15, 25, 25, 0.8, 1],
                         [90, 90, 110, 110, 0.7, 2]], dtype=np.float32)
    assert det.dtype == np.float32 and det.shape == (3, 6)
    np.testing.assert_allclose(det, expected, rtol=1e-6)
    # batch dim of 1 accepted; conf is inclusive; max_det keeps the best
    np.testing.assert_allclose(decode_ultralytics(out[None], conf=0.25), expected, rtol=1e-6)
    assert len(decode_ultralytics(out, conf=0.2)) == 4
    np.testing.assert_allclose(decode_ultralytics(out, max_det=1), expected[:1], rtol=1e-6)
    assert decode_ultralytics(out, conf=0.95).shape == (0, 6)
    with pytest.raises(UnsupportedModelError):
        decode_ultralytics(np.zeros((4, 10)))


# ------------------------------------------------------------------------------------------------- AP

def test_ap_perfect_predictions():
    truth = [_truth([0, 0, 10, 10, 0], [20, 20, 40, 50, 1]), _truth([5, 5, 25, 15, 1]), _truth()]
    pred = [_perfect(t) for t in truth]
    result = average_precision(pred, truth)
    assert result["map50"] == 1.0 and result["map50_95"] == 1.0
    assert result["classes"] == 2
    # low-scoring extra boxes ranked after every true positive do not change AP
    pred[2] = np.array([[100, 100, 120, 120, 0.01, 1]])
    assert average_precision(pred, truth)["map50_95"] == 1.0


def test_ap_shifted_boxes():
    truth = [_truth([0, 0, 10, 10, 0], [20, 20, 40, 30, 1])]
    widths = truth[0][:, 2] - truth[0][:, 0]
    half = _perfect(truth[0])
    half[:, [0, 2]] += widths[:, None] / 2  # IoU 1/3 with its truth box
    result = average_precision([half], truth)
    assert result["map50"] == 0.0 and result["map50_95"] == 0.0
    fifth = _perfect(truth[0])
    fifth[:, [0, 2]] += widths[:, None] / 5  # IoU 2/3: a hit at 0.50, 0.55, 0.60, 0.65 only
    result = average_precision([fifth], truth)
    assert result["map50"] == 1.0
    assert result["map50_95"] == pytest.approx(0.4)
    assert result["per_threshold"] == [1.0] * 4 + [0.0] * 6


def test_ap_missing_prediction_halves():
    truth = [_truth([0, 0, 10, 10, 3]), _truth([30, 30, 50, 50, 3])]
    pred = [_perfect(truth[0]), np.zeros((0, 6))]
    result = average_precision(pred, truth)
    # recall 0.5 at precision 1: the 51 recall points 0.00 .. 0.50 score 1, the other 50 score 0
    assert result["map50"] == pytest.approx(51 / 101, abs=1e-12)
    assert result["map50_95"] == pytest.approx(51 / 101, abs=1e-12)
    # averaged with a perfectly detected class
    truth[1] = np.concatenate([truth[1], _truth([0, 0, 5, 5, 7])])
    pred[1] = _perfect(truth[1][1:])
    assert average_precision(pred, truth)["map50"] == pytest.approx((1 + 51 / 101) / 2, abs=1e-12)


def test_ap_ranking_and_matching():
    truth = [_truth([0, 0, 10, 10, 0])]
    # a false positive scored above the true positive: precision 1/2 at recall 1
    pred = [np.array([[50, 50, 60, 60, 0.9, 0], [0, 0, 10, 10, 0.5, 0]])]
    assert average_precision(pred, truth)["map50"] == pytest.approx(0.5)
    # a duplicate of a matched box is a false positive, but ranked last it does not lower AP
    pred = [np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.5, 0]])]
    assert average_precision(pred, truth)["map50"] == 1.0
    # the right box with the wrong class does not count
    pred = [np.array([[0, 0, 10, 10, 0.9, 1]])]
    assert average_precision(pred, truth)["map50"] == 0.0


def test_ap_arguments():
    empty = average_precision([np.zeros((0, 6))], [np.zeros((0, 5))])
    assert math.isnan(empty["map50"]) and empty["classes"] == 0
    with pytest.raises(InvalidArgumentError):
        average_precision([np.zeros((0, 6))], [])
    with pytest.raises(InvalidArgumentError):
        average_precision([np.zeros((1, 5))], [_truth([0, 0, 1, 1, 0])])
    with pytest.raises(InvalidArgumentError):
        average_precision([np.zeros((0, 6))], [_truth([0, 0, 1, 1, 0])], iou_thresholds=[0.75])


# --------------------------------------------------------------------------------------------- images

def test_letterbox():
    from PIL import Image

    image = Image.new("RGB", (200, 100), (255, 0, 0))
    array, scale, (pad_x, pad_y) = letterbox(image, 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    assert scale == pytest.approx(0.32) and (pad_x, pad_y) == (0, 16)
    np.testing.assert_allclose(array[:, 0, 0], 114 / 255)          # top padding
    np.testing.assert_allclose(array[:, 63, 63], 114 / 255)        # bottom padding
    np.testing.assert_allclose(array[:, 32, 32], [1.0, 0.0, 0.0])  # the image itself
    with pytest.raises(InvalidArgumentError):
        letterbox("/nonexistent/image.jpg", 64)


def test_reference_images_deterministic():
    # matplotlib (a core dependency) ships grace_hopper.jpg, so the photos are always there: no skip
    images = reference_images(6, 64)
    assert len(images) == 6
    assert all(a.shape == (3, 64, 64) and a.dtype == np.float32 for a in images)
    assert all(0.0 <= a.min() and a.max() <= 1.0 for a in images)
    again = reference_images(6, 64)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    other = reference_images(6, 64, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(images, other))


# ---------------------------------------------------------------------------------- real YOLOv8n model

def test_fidelity_map_nudenet_against_itself():
    path = helpers.packaged_model_or_skip("nudenet-yolov8n")
    images = reference_images(4)
    result = fidelity_map(path, path, images, threads=1)
    assert result["task"] == "detection" and result["images"] == 4
    assert result["reference_boxes"] > 0
    assert result["map50"] == 1.0 and result["map50_95"] == 1.0
