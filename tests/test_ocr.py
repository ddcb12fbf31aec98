"""OCR evaluation: seeded renderers, rapidocr's pre/post-processing, CTC decoding, DB boxes, metrics, CLI."""

from __future__ import annotations

import json

import helpers
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxdepth.errors import InvalidArgumentError, UnsupportedModelError
from onnxdepth.eval.ocr import (
    character_list,
    ctc_greedy_decode,
    db_postprocess,
    det_preprocess,
    detection_prf,
    edit_distance,
    evaluate_ocr,
    font_paths,
    ocr_detection,
    ocr_recognition,
    rec_preprocess,
    recognition_accuracy,
    render_lines,
    render_pages,
)

# Thresholds for the real PP-OCRv4 models, well below what they score on the defaults (200 lines:
# character accuracy 0.9995, line accuracy 0.995; 50 pages: F1 0.987).
REC_MIN_CHAR_ACCURACY = 0.9
DET_MIN_F1 = 0.8


@pytest.fixture(scope="module")
def rec_model():
    return helpers.packaged_model_or_skip("ppocr-rec")


@pytest.fixture(scope="module")
def det_model():
    return helpers.packaged_model_or_skip("ppocr-det")


# ------------------------------------------------------------------------------------------ renderers

def test_fonts_found():
    # matplotlib (a core dependency, not an extra: no skip) ships the DejaVu fonts the renderers use
    assert font_paths() and all(p.suffix == ".ttf" and p.is_file() for p in font_paths())


def test_render_lines_deterministic():
    a, b, c = render_lines(6, seed=3), render_lines(6, seed=3), render_lines(6, seed=4)
    assert len(a) == len(b) == len(c) == 6
    assert [t for _, t in a] == [t for _, t in b]
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert [t for _, t in a] != [t for _, t in c]
    for image, text in a:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert text and text == text.strip() and "  " not in text
        assert image[..., 0].min() < image[..., 0].max() - 60  # ink visibly darker than the background
    with pytest.raises(InvalidArgumentError):
        render_lines(0)


def test_render_pages_deterministic_and_separate():
    a, b = render_pages(3, seed=1, size=320), render_pages(3, seed=1, size=320)
    assert len(a) == len(b) == 3
    for (img_a, boxes_a), (img_b, boxes_b) in zip(a, b):
        assert np.array_equal(img_a, img_b) and np.array_equal(boxes_a, boxes_b)
        assert img_a.shape == (320, 320, 3) and boxes_a.shape[1] == 4 and len(boxes_a) >= 1
        assert (boxes_a[:, :2] >= 0).all() and (boxes_a[:, 2:] <= 320).all()
        assert (boxes_a[:, 2:] > boxes_a[:, :2]).all()
        from onnxdepth.eval.detection import box_iou

        overlap = box_iou(boxes_a, boxes_a)
        assert np.allclose(overlap, np.eye(len(boxes_a)))  # no two items touch
        # ink inside every box, none far outside the boxes
        gray = img_a[..., 0].astype(int)
        inside = np.zeros(gray.shape, dtype=bool)
        for x1, y1, x2, y2 in boxes_a.astype(int):
            assert gray[y1:y2, x1:x2].min() < np.median(gray) - 60
            inside[y1:y2, x1:x2] = True
        assert gray[~inside].min() > np.median(gray) - 40  # only noise outside
    assert not np.array_equal(render_pages(1, seed=2, size=320)[0][0], a[0][0])


# ------------------------------------------------------------------------------------- preprocessing

def test_rec_preprocess_pads_to_320():
    image = np.full((30, 90, 3), 255, dtype=np.uint8)  # aspect ratio 3 -> 144 px wide at height 48
    x = rec_preprocess(image)
    assert x.shape == (1, 3, 48, 320) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., :144], 1.0)  # white -> (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[..., 144:], 0.0)  # right padding
    wide = rec_preprocess(np.zeros((20, 400, 3), dtype=np.uint8))  # ratio 20: width 48 * 20, no padding
    assert wide.shape == (1, 3, 48, 960)
    np.testing.assert_allclose(wide, -1.0)
    fixed = rec_preprocess(np.zeros((20, 400, 3), dtype=np.uint8), width=100)  # squeezed into a fixed width
    assert fixed.shape == (1, 3, 48, 100)
    with pytest.raises(InvalidArgumentError):
        rec_preprocess(np.zeros((10, 10), dtype=np.uint8))


def test_det_preprocess_sizes():
    x = det_preprocess(np.full((640, 640, 3), 255, dtype=np.uint8))
    assert x.shape == (1, 3, 736, 736)  # short side up to 736 (rapidocr "min")
    np.testing.assert_allclose(x, 1.0)
    # 100 x 300: ratio 7.36 -> 736 x 2208, both multiples of 32
    assert det_preprocess(np.zeros((100, 300, 3), dtype=np.uint8)).shape == (1, 3, 736, 2208)
    # "max": 1000 x 500 scaled down to 736 on the long side -> 736 x 368
    assert det_preprocess(np.zeros((1000, 500, 3), dtype=np.uint8), limit_type="max").shape == (1, 3, 736, 384)
    with pytest.raises(InvalidArgumentError):
        det_preprocess(np.zeros((64, 64, 3), dtype=np.uint8), limit_type="middle")


# ------------------------------------------------------------------------------------------- decoding

def _one_hot(indices, classes: int) -> np.ndarray:
    probs = np.full((len(indices), classes), 0.01, dtype=np.float32)
    probs[np.arange(len(indices)), indices] = 0.9
    return probs


def test_character_list_like_rapidocr():
    assert character_list("a\nb\n1") == ["blank", "a", "b", "1", " "]
    assert character_list(["x"]) == ["blank", "x", " "]
    with pytest.raises(InvalidArgumentError):
        character_list("")


def test_ctc_greedy_decode():
    chars = character_list("a\nb\nc")  # blank, a, b, c, space
    # a a _ a b b _ _ space c c -> repeats collapsed, blanks dropped, the blank splits the two a's
    probs = _one_hot([1, 1, 0, 1, 2, 2, 0, 0, 4, 3, 3], len(chars))
    assert ctc_greedy_decode(probs, chars) == ["aab c"]
    batch = np.stack([probs, _one_hot([0] * 11, len(chars))])
    assert ctc_greedy_decode(batch, chars) == ["aab c", ""]
    with pytest.raises(UnsupportedModelError):
        ctc_greedy_decode(probs, chars[:-1])


def test_edit_distance_and_accuracy():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("", "abc") == edit_distance("abc", "") == 3
    assert edit_distance("abc", "abc") == 0
    r = recognition_accuracy(["abc", "xy"], ["ab c", "xyz"])
    # spaces ignored: 0 + 1 edits over 3 + 3 characters; one exact line of two
    assert r["char_accuracy"] == pytest.approx(1 - 1 / 6) and r["line_accuracy"] == 0.5
    r = recognition_accuracy(["abc", "xy"], ["ab c", "xyz"], ignore_space=False)
    assert r["char_accuracy"] == pytest.approx(1 - 2 / 7) and r["line_accuracy"] == 0.0
    assert recognition_accuracy(["zzzzzz"], ["ab"])["char_accuracy"] == pytest.approx(1 - 6 / 2)
    with pytest.raises(InvalidArgumentError):
        recognition_accuracy(["a"], [])


def test_db_postprocess_hand_made_map():
    prob = np.zeros((64, 64), dtype=np.float32)
    prob[10:20, 5:45] = 0.9  # a text region: rows 10-19, columns 5-44
    prob[40:50, 10:30] = 0.35  # above the 0.3 threshold but its mean is under box_thresh 0.5
    prob[56:58, 56:58] = 0.9  # 2 x 2 (3 x 3 after dilation): short side 2 < 3
    quads, boxes = db_postprocess(prob, (64, 64))
    # The 2x2 dilation grows the region to columns 5-45, rows 10-20: a 40 x 10 rectangle centred at
    # (25, 15). Unclip distance = area * 1.6 / perimeter = 400 * 1.6 / 100 = 6.4 -> 52.8 x 22.8, i.e.
    # x -1.4 .. 51.4, y 3.6 .. 26.4; rounded and clipped to the image: (0, 4) - (51, 26).
    np.testing.assert_array_equal(boxes, [[0, 4, 51, 26]])
    np.testing.assert_array_equal(quads, [[[0, 4], [51, 4], [51, 26], [0, 26]]])
    # scaled to an image twice the map's size: x -2.8 .. 102.8, y 7.2 .. 52.8
    np.testing.assert_array_equal(db_postprocess(prob[None, None], (128, 128))[1], [[0, 7, 103, 53]])
    # without unclip the box is the dilated region itself
    np.testing.assert_array_equal(db_postprocess(prob, (64, 64), unclip_ratio=0.0)[1], [[5, 10, 45, 20]])
    # lower box threshold: the faint region comes in too (20 x 10 + dilation, unclipped by 21*11*1.6/64)
    assert len(db_postprocess(prob, (64, 64), box_thresh=0.3)[1]) == 2
    assert db_postprocess(np.zeros((32, 32)), (32, 32))[1].shape == (0, 4)


def test_detection_prf():
    truth = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]])]
    # one exact hit, one shifted by 1 px (IoU 90 / 110 = 0.82), one false positive
    pred = [np.array([[0, 0, 10, 10], [21, 0, 31, 10], [50, 50, 60, 60]])]
    r = detection_prf(pred, truth)
    assert (r["matched"], r["predicted"], r["truth"]) == (2, 3, 2)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0 and r["f1"] == pytest.approx(0.8)
    # one-to-one: two predictions of the same truth box count once
    r = detection_prf([np.array([[0, 0, 10, 10], [0, 0, 10, 9]])], [np.array([[0, 0, 10, 10]])])
    assert (r["precision"], r["recall"]) == (0.5, 1.0)
    # IoU below 0.5 (half-shifted: 1/3) is a miss; nothing predicted -> all zero
    r = detection_prf([np.array([[5, 0, 15, 10]])], [np.array([[0, 0, 10, 10]])])
    assert r["f1"] == 0.0
    assert detection_prf([np.zeros((0, 4))], [np.array([[0, 0, 10, 10]])])["f1"] == 0.0
    # summed over images
    r = detection_prf([np.array([[0, 0, 10, 10]]), np.zeros((0, 4))],
                      [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 5, 5]])])
    assert (r["precision"], r["recall"]) == (1.0, 0.5)
    with pytest.raises(InvalidArgumentError):
        detection_prf([], truth)


# ------------------------------------------------------------------------------------- real models

def test_ppocr_rec_reads_rendered_lines(rec_model):
    result = ocr_recognition(rec_model, samples=20, seed=0, threads=1)
    assert result["kind"] == "rec" and result["samples"] == 20
    assert result["char_accuracy"] >= REC_MIN_CHAR_ACCURACY, result["examples"]


def test_ppocr_det_finds_rendered_lines(det_model):
    result = ocr_detection(det_model, samples=4, seed=0, threads=1)
    assert result["kind"] == "det" and result["samples"] == 4 and result["truth_boxes"] > 10
    assert result["f1"] >= DET_MIN_F1, result


def test_cli_ocr_json_autodetects(cli, rec_model, det_model):
    code, out, err = cli("eval", rec_model, "--task", "ocr", "--samples", "3", "--threads", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"task", "kind", "char_accuracy", "line_accuracy", "samples"}
    assert result["task"] == "ocr" and result["kind"] == "rec" and result["samples"] == 3
    code, out, err = cli("eval", det_model, "--task", "ocr", "--samples", "1", "--seed", "5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"task", "kind", "precision", "recall", "f1", "samples"}
    assert result["kind"] == "det" and result["samples"] == 1


# ------------------------------------------------------------------------------------------- errors

def _classifier(tmp_path):
    """A tiny image classifier: x [1, 3, 32, 32] -> Conv -> GlobalAveragePool -> Flatten -> [1, 4]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(4 * 27, dtype=np.float32) * 0.01)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["y"])],
        "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cls.onnx"
    onnx.save(model, str(path))
    return path


def _one_error_line(code, out, err, *needles):
    assert code == 1 and out == ""
    assert err.startswith("onnxdepth: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert needles, "name at least one text the message must hold"
    for needle in needles:
        assert needle in err


def test_cli_ocr_incompatible_model(cli, tmp_path):
    path = _classifier(tmp_path)
    _one_error_line(*cli("eval", path, "--task", "ocr"), "[batch, time, classes]")
    with pytest.raises(UnsupportedModelError):
        evaluate_ocr(path)
    # forced kind on a model whose output fits neither
    _one_error_line(*cli("eval", path, "--task", "ocr", "--ocr-kind", "det"), "not a [batch, 1, H, W] output")


def test_cli_ocr_errors(cli, det_model, tmp_path):
    _one_error_line(*cli("eval", det_model, "--task", "ocr", "--ocr-kind", "rec"), "[batch, time, classes]")
    _one_error_line(*cli("eval", det_model, "--task", "ocr", "--samples", "0"), "samples")
    _one_error_line(*cli("eval", tmp_path / "missing.onnx", "--task", "ocr"), "not found")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    _one_error_line(*cli("eval", bad, "--task", "ocr"), "bad.onnx")
