"""Taylor importance on every reference model kind beyond YOLO and causal LMs.

PP-OCRv4 rec (CTC probabilities), PP-OCRv4 det (DB probability map) and a tiny BERT encoder (hidden
states): the onnx2torch module reproduces ONNX Runtime, each pseudo-label loss is finite with a non-zero
gradient at the unpruned model (most weights get a non-zero score), and `prune_model(..., importance=
"taylor")` reaches a small ratio and verifies. The encoder's unit scores equal the ones computed by hand
with autograd on the transformers model itself. The packaged OCR models run on 2 small calibration inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

import helpers  # noqa: E402
import onnxruntime as ort  # noqa: E402

from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth import api  # noqa: E402
from onnxdepth.importance import taylor_calibration  # noqa: E402
from onnxdepth.calibration import (  # noqa: E402
    OCR_CALIBRATION_SEED,
    calibration_ocr_lines,
    calibration_ocr_pages,
    calibration_sentences,
)
from onnxdepth.errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError  # noqa: E402
from onnxdepth.eval.embedding import DEFAULT_SENTENCES  # noqa: E402
from onnxdepth.eval.ocr import det_preprocess, render_lines, render_pages  # noqa: E402
from onnxdepth.importance.taylor import (  # noqa: E402
    INFONCE_TEMPERATURE,
    TaylorEncoderScores,
    TaylorSidecar,
    output_kind,
    torch_module,
)
from onnxdepth.prune.session import PruneSession  # noqa: E402

# onnx2torch's Slice indexes with a list (a deprecation warning of torch, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

SENTENCES = 8  # tiny BERT calibration sentences (one contrastive batch)
SEQ_LEN = 32


def _ort(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _packaged(name: str) -> onnx.ModelProto:
    return onnx.load(str(helpers.packaged_model_or_skip(name)))


@pytest.fixture(scope="module")
def rec() -> onnx.ModelProto:
    return _packaged("ppocr-rec")


@pytest.fixture(scope="module")
def det() -> onnx.ModelProto:
    return _packaged("ppocr-det")


@pytest.fixture(scope="module")
def det_calib(tmp_path_factory) -> Path:
    """Two rendered pages preprocessed as the evaluation does, but to 128 x 128 (not 736) to stay fast."""
    path = tmp_path_factory.mktemp("det") / "pages.npz"
    pages = [det_preprocess(image[:, :, ::-1], limit_side_len=128, limit_type="max")
             for image, _ in render_pages(2, seed=7, size=128)]
    np.savez(path, images=np.concatenate(pages))
    return path


def _tokenizer(directory: Path) -> None:
    """A 128-entry WordPiece tokenizer (specials, letters, ##letters, words of the built-in sentences)."""
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = sorted({w.strip(".,-").lower() for s in DEFAULT_SENTENCES for w in s.split()} - set(letters))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", *letters, *(f"##{c}" for c in letters)]
    vocab += words[: 128 - len(vocab)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(str(directory))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(HF directory, exported model.onnx with its tokenizer) of a tiny random BertModel."""
    pytest.importorskip("optimum.exporters.onnx")
    from tiny_hf import save_tiny_bert

    from onnxdepth.export.hf import export_hf

    root = tmp_path_factory.mktemp("bert")
    src = save_tiny_bert(root / "hf", seed=0, vocab=128)
    _tokenizer(src)
    return src, export_hf(src, root / "export", task="feature-extraction")


def _nonzero_fraction(scores: dict) -> float:
    values = np.concatenate([v.reshape(-1) for v in scores.values()])
    return float((values > 0).mean())


# -- kinds and calibration ---------------------------------------------------------------------------------

def test_output_kind_from_the_reference_output():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 10, 30))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # softmax over the class axis (2)
    assert output_kind(probs.astype(np.float32)) == "ctc_probs"
    assert output_kind(rng.uniform(size=(1, 1, 8, 8))) == "prob_map"
    boxes = np.concatenate([rng.uniform(0, 320, (1, 4, 50)), rng.uniform(size=(1, 18, 50))], axis=1)
    assert output_kind(boxes) == "detect3d"
    assert output_kind(rng.normal(size=(2, 5, 16)), token_inputs=True) == "hidden"
    with pytest.raises(UnsupportedModelError, match="no label-free loss"):
        output_kind(rng.normal(size=(1, 4, 8, 8)))


def test_ocr_and_sentence_calibration(tmp_path):
    lines = calibration_ocr_lines(None, count=3)
    # Rendered with a seed other than the evaluation's (0), preprocessed like it: [1, 3, 48, >= 320].
    assert [line.shape[:3] for line in lines] == [(1, 3, 48)] * 3 and all(x.shape[3] >= 320 for x in lines)
    assert render_lines(1, OCR_CALIBRATION_SEED)[0][1] != render_lines(1, 0)[0][1]
    pages = calibration_ocr_pages(None, count=1)
    assert pages[0].shape == (1, 3, 736, 736)  # 640-px pages, short side up to 736
    from PIL import Image

    Image.fromarray(render_lines(1, 3)[0][0]).save(tmp_path / "line.png")
    assert calibration_ocr_lines(str(tmp_path), count=5, width=200)[0].shape == (1, 3, 48, 200)
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 32, 100), np.float32))
    with pytest.raises(InvalidArgumentError, match=r"expected \[N, 3, 48, W\]"):
        calibration_ocr_lines(str(tmp_path / "bad.npz"))
    # Pages from a folder: BGR, sides made multiples of 32 by the detector's preprocessing.
    page_dir = tmp_path / "pages"
    page_dir.mkdir()
    Image.fromarray(np.full((300, 500, 3), 255, np.uint8)).save(page_dir / "page.png")
    (page,) = calibration_ocr_pages(str(page_dir), count=4)
    assert page.shape[:2] == (1, 3) and page.shape[2] % 32 == 0 and page.shape[3] % 32 == 0
    with pytest.raises(InvalidArgumentError, match="expected a folder of page images or an .npz"):
        calibration_ocr_pages(str(tmp_path / "line.png"))  # a single image file, not a folder
    text = tmp_path / "wiki.txt"
    text.write_text("\n = Heading = \n\n First line .\n Second line .\n Third\n", encoding="utf-8")
    assert calibration_sentences(str(text), 2) == ["First line .", "Second line ."]
    assert calibration_sentences(None, 3) == list(DEFAULT_SENTENCES[:3])
    with pytest.raises(InvalidArgumentError, match="no such file"):
        calibration_sentences(str(tmp_path / "missing.txt"))


def test_cli_taylor_bad_calibration_is_one_line(cli, tmp_path):
    src = helpers.packaged_model_or_skip("ppocr-rec")
    np.savez(tmp_path / "pages.npz", images=np.zeros((1, 3, 64, 64), np.float32))
    for calib, needle in [(tmp_path / "missing", "no such file"), (tmp_path / "pages.npz", "expected [N, 3, 48, W]")]:
        code, out, err = cli("prune", src, tmp_path / "out.onnx", "--ratio", "0.05", "--importance", "taylor",
                             "--calib", calib)
        assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err and needle in err
        assert not (tmp_path / "out.onnx").exists()


# -- PP-OCRv4 recognizer and detector --------------------------------------------------------------------

@pytest.fixture
def sidecars(monkeypatch) -> list[TaylorSidecar]:
    """The Taylor sidecars that prune_model builds (so that their scores can be checked afterwards)."""
    from onnxdepth.importance import taylor

    built = []

    class Recorded(TaylorSidecar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(taylor, "TaylorSidecar", Recorded)
    return built


def _matches_ort(model: onnx.ModelProto, image: np.ndarray) -> None:
    with torch.no_grad():
        out = torch_module(model)(torch.from_numpy(image))
    assert np.abs(out.numpy() - _ort(model, {"x": image})).max() < 1e-4


def test_rec_taylor(rec, sidecars, monkeypatch):
    _matches_ort(rec, calibration_ocr_lines(None, count=1)[0])
    monkeypatch.setattr(taylor_calibration, "TAYLOR_LINES", 2)
    # Attention blocks (the SVTR neck): scored once, on the unpruned model, like the other transformers.
    result = api.prune_model(rec, PruneConfig(0.03, importance="taylor"))
    assert result.reduction >= 0.03 and result.plan["importance"] == "taylor"
    (sidecar,) = sidecars
    assert sidecar.kind == "ctc_probs" and len(sidecar.batches) == 1  # 2 lines 320 px wide: one batch
    assert np.isfinite(sidecar.last_loss) and sidecar.last_loss > 0
    assert _nonzero_fraction(sidecar.scores) > 0.9


def test_det_taylor(det, det_calib, sidecars, monkeypatch):
    pages = np.load(det_calib)["images"]
    _matches_ort(det, pages[:1])
    monkeypatch.setattr(taylor_calibration, "TAYLOR_PAGES", 2)
    steps = []
    # One Conv unit of the detector is 1.7 % of its parameters: Algorithm 9 refreshes once, on the unpruned model.
    result = api.prune_model(det, PruneConfig(0.015, importance="taylor", calibration=Calibration(str(det_calib))),
                             on_step=lambda plan, reduction: steps.append(plan.unit_id))
    assert result.reduction >= 0.015 and result.pruned_units == steps and len(steps) == 1
    (sidecar,) = sidecars
    assert sidecar.kind == "prob_map" and sidecar.images[0].shape == (1, 3, 128, 128)
    assert np.isfinite(sidecar.last_loss) and sidecar.last_loss > 0
    assert _nonzero_fraction(sidecar.scores) > 0.8


# -- tiny BERT encoder -----------------------------------------------------------------------------------

def _feeds(model_path: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent))
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=SEQ_LEN, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}


def _hand_taylor(hf_dir: Path, feeds: dict) -> dict[str, float]:
    """Attention-unit Taylor scores of the transformers BertModel: InfoNCE of its mean-pooled embeddings
    against its own detached ones, sum over Q/K/V/O weights of (dE/dW * W)^2."""
    from transformers import BertModel

    model = BertModel.from_pretrained(str(hf_dir)).eval()
    batch = {k: torch.from_numpy(v) for k, v in feeds.items()}
    hidden = model(**batch).last_hidden_state  # [sentence, token, hidden]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # mean over the real tokens (axis 1)
    emb = pooled / pooled.norm(dim=-1, keepdim=True)
    ref = emb.detach()
    loss = torch.nn.functional.cross_entropy(emb @ ref.T / INFONCE_TEMPERATURE, torch.arange(len(emb)))
    loss.backward()
    scores = {}
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention
        projections = (attn.self.query, attn.self.key, attn.self.value, attn.output.dense)
        scores[f"layer{i}.attention"] = sum(float((p.weight.grad.double() * p.weight.detach().double()).pow(2).sum())
                                            for p in projections)
    return scores


def test_encoder_taylor_equals_autograd_by_hand(bert):
    hf_dir, path = bert
    model = onnx.load(str(path))
    feeds = _feeds(path, list(DEFAULT_SENTENCES[:SENTENCES]))
    module = torch_module(model)
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[i.name]) for i in model.graph.input))
    assert np.abs(out.numpy() - _ort(model, feeds)).max() < 1e-4
    scores = TaylorEncoderScores(model, [feeds])
    assert scores.kind == "hidden" and np.isfinite(scores.last_loss) and scores.last_loss > 0
    # Most weights: the embedding rows of tokens (and positions) the batch does not use get no gradient.
    assert _nonzero_fraction(scores.scores) > 0.75
    matmuls = [v for (name, index), v in scores.scores.items() if "MatMul" in name and index == 1]
    assert matmuls and _nonzero_fraction(dict(enumerate(matmuls))) > 0.99
    session = PruneSession(model)
    session.importance = scores
    session._invalidate()
    plans = {p.unit_id: p for p in session.prunable_plans()}
    by_hand = _hand_taylor(hf_dir, feeds)
    assert sorted(by_hand) == ["layer0.attention", "layer1.attention"]  # save_tiny_bert: 2 layers
    for unit_id, expected in by_hand.items():
        assert expected > 0 and plans[unit_id].score == pytest.approx(expected, rel=1e-3), unit_id


def test_encoder_prune_with_taylor(bert, tmp_path):
    _, path = bert
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(DEFAULT_SENTENCES[20:20 + SENTENCES]) + "\n", encoding="utf-8")
    model = onnx.load(str(path))
    calibration = Calibration(str(text), SENTENCES, SEQ_LEN, model_path=path)
    result = api.prune_model(model, PruneConfig(0.1, importance="taylor", calibration=calibration))
    assert result.reduction >= 0.1 and result.plan["importance"] == "taylor"
    with pytest.raises(ModelLoadError, match="tokenizer"):
        lonely = tmp_path / "lonely" / "model.onnx"
        lonely.parent.mkdir()
        onnx.save(model, str(lonely))
        api.prune_model(model, PruneConfig(0.1, importance="taylor",
                                           calibration=Calibration(str(text), SENTENCES, SEQ_LEN, model_path=lonely)))


def test_shared_initializers_and_resize18_convert():
    """Exporters read deduplicated weights through Identity nodes and emit Resize-18 (ultralytics at opset
    18): the sidecar's module still equals ONNX Runtime, and each Conv gets its own weight tensor."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxdepth.importance.taylor import torch_module

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2")
    zero = numpy_helper.from_array(np.zeros(4, np.float32), "zero_bias")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Identity", ["zero_bias"], ["b1"], name="id1"),
             helper.make_node("Identity", ["zero_bias"], ["b2"], name="id2"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Resize", ["c2", "", "scales"], ["y"], name="up", mode="nearest")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                              initializer=[w1, w2, zero, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    x = rng.random((1, 3, 8, 8), dtype=np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = torch_module(model)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
