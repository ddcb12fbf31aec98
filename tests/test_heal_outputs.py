"""Healing models that are not language models: a sentence encoder (cosine to the teacher's embeddings) and
the real YOLOv8n nudenet ships (distillation on the raw head outputs), each pruned, healed a few steps and
written back verified; and the refusal of an output kind with no loss."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnx2torch")
pytest.importorskip("torch")

from onnxdepth import api  # noqa: E402
from onnxdepth.config import PruneConfig  # noqa: E402
from onnxdepth.errors import InvalidArgumentError, UnsupportedModelError  # noqa: E402
from onnxdepth.heal import HealConfig, heal_file, heal_model  # noqa: E402

import graphs  # noqa: E402


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    pytest.importorskip("optimum.exporters.onnx")
    from onnxdepth.export.hf import export_hf
    from test_embedding import _save_tokenizer
    from tiny_hf import save_tiny_bert

    root = tmp_path_factory.mktemp("heal-encoder")
    src = save_tiny_bert(root / "bert", seed=0, vocab=128, layers=3, positions=256)
    _save_tokenizer(src)
    teacher = export_hf(src, root / "fe", task="feature-extraction")
    pruned = root / "pruned.onnx"
    api.prune_file(teacher, pruned, PruneConfig(0.3, importance="magnitude"))
    return teacher, pruned


def test_an_encoder_heals_towards_the_teachers_embeddings(encoder, tmp_path):
    teacher, pruned = encoder
    out = tmp_path / "healed.onnx"
    plan = heal_file(pruned, out, teacher, HealConfig(steps=24, eval_every=8, held_out=6, batch=4, seq_len=16, lr=3e-4,
                                                      warmup=2), progress=False)
    record = plan["healing"]
    assert record["metric"] == "cosine" and "sentences" in record["data"]
    curve = record["held_out_curve"]
    best = next(c for c in curve if c[0] == record["best_step"])
    assert record["best_step"] > 0 and best[3] > curve[0][3]  # the held-out cosine rose
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.integration
def test_the_nudenet_detector_heals_on_photo_variants(tmp_path):
    from onnxdepth.models_zoo import nudenet_yolov8n

    teacher = nudenet_yolov8n()
    pruned = tmp_path / "pruned.onnx"
    api.prune_file(teacher, pruned, PruneConfig(0.1, importance="magnitude", compensate="none",
                                                input_shapes={"images": (1, 3, 320, 320)}))
    out = tmp_path / "healed.onnx"
    plan = heal_file(pruned, out, teacher, HealConfig(steps=6, eval_every=3, held_out=3, batch=2, lr=1e-3, warmup=1),
                     progress=False)
    record = plan["healing"]
    assert "detector" in record["objective"] and "images" in record["data"]
    assert record["best_step"] > 0 and record["best_held_out_loss"] < record["held_out_curve"][0][2]
    onnx.checker.check_model(str(out), full_check=True)


def test_an_output_with_no_loss_is_refused(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(graphs.build_residual(), str(path))
    with pytest.raises(UnsupportedModelError, match="heal: no label-free loss"):
        heal_model(graphs.build_residual(), str(path), HealConfig(steps=1, held_out=1))


def test_sampled_text_is_refused_for_a_model_that_is_not_a_language_model(encoder, tmp_path):
    teacher, pruned = encoder
    with pytest.raises(InvalidArgumentError, match="--sampled"):
        heal_file(pruned, tmp_path / "x.onnx", teacher, HealConfig(steps=2, held_out=2, sampled=4), progress=False)
    assert not (tmp_path / "x.onnx").exists()
