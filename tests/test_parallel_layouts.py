"""Phi-2 and Falcon layouts (optimum exports with past): parallel attention and MLP off one norm, fused QKV
(Falcon's multi-query query_key_value), partial rotary (Phi). Every unit is found and prunable, a 0.2 prune
takes attention and MLP units, and the pruned model is valid with a consistent cache."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("torch")

from onnxdepth import api  # noqa: E402
from onnxdepth.config import PruneConfig  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.graph.io import load_model  # noqa: E402
from onnxdepth.runtime import open_session  # noqa: E402

from test_gpt2_layout import _feeds, assert_cached_step_matches  # noqa: E402
from tiny_hf import save_tiny_falcon, save_tiny_phi  # noqa: E402

_BUILDERS = {"phi": save_tiny_phi, "falcon": save_tiny_falcon}


@pytest.fixture(scope="module", params=sorted(_BUILDERS))
def decoder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return export_hf(_BUILDERS[request.param](folder / "hf"), folder / "onnx", task="text-generation-with-past")


def test_every_unit_is_found_and_prunable(decoder):
    units = api.list_units(load_model(decoder))
    body = [u for u in units if u.excluded_reason != "graph head"]  # the LM head is kept out, as everywhere
    assert len(body) >= 4 * 3, [u.id for u in units]  # per layer: attention, MLP up, MLP down at least
    assert all(u.prunable for u in body), [(u.id, u.excluded_reason) for u in body if not u.prunable]
    # Parallel blocks are not grouped into sequential layers: the MLP projections are plain linear units.
    assert sum(u.kind == "attention" for u in body) == 4
    assert sum(u.kind == "layer" and "/mlp/" in u.id for u in body) == 8


def test_a_prune_at_0_2_takes_attention_and_mlp_and_keeps_the_cache_consistent(decoder, tmp_path):
    out = tmp_path / "pruned.onnx"
    result = api.prune_file(decoder, out, PruneConfig(0.2, importance="magnitude"))
    assert result.reduction >= 0.2
    assert all(u.endswith(".attention") or "/mlp/" in u for u in result.pruned_units), result.pruned_units
    onnx.checker.check_model(str(out), full_check=True)
    assert_cached_step_matches(open_session(str(out)))


def test_a_forced_prune_of_one_attention_and_one_mlp_is_valid(decoder):
    """Both kinds taken by hand (a replayed plan): the parallel residual, where attention and MLP add into one
    stream, stays right."""
    model = load_model(decoder)
    units = api.list_units(model)
    chosen = [next(u.id for u in units if u.kind == "attention"), next(u.id for u in units if "/mlp/" in u.id)]
    result = api.replay_plan(model, {"granularity": "fine", "steps": [{"unit": u} for u in chosen]})
    assert result.pruned_units == chosen and result.reduction > 0
    onnx.checker.check_model(result.model, full_check=True)
    session = open_session(result.model)
    ids = np.random.default_rng(1).integers(0, 128, size=(1, 6))
    logits = session.run(["logits"], _feeds(session, ids))[0]
    assert logits.shape == (1, 6, 128) and np.isfinite(logits).all()
