"""A GPT-2-layout decoder (fused QKV split three ways, Conv1D-style Gemms between flatten / unflatten
Reshapes, exported with past by optimum): attention and MLP units prune validly and the cache stays
consistent."""

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

from tiny_hf import decoder_feed, save_tiny_gpt2  # noqa: E402


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    return export_hf(save_tiny_gpt2(folder / "hf"), folder / "onnx", task="text-generation-with-past")


def _feeds(session, ids, past=None):
    feeds = decoder_feed(ids, 0 if past is None else next(iter(past.values())).shape[2])
    names = {i.name: i for i in session.get_inputs()}
    for name, spec in names.items():
        if name.startswith("past_key_values"):
            # [batch, heads, cached length, head dim]
            feeds[name] = past[name] if past is not None else np.zeros((1, spec.shape[1], 0, spec.shape[3]),
                                                                        np.float32)
    return {k: v for k, v in feeds.items() if k in names}


def test_every_unit_is_prunable(gpt2):
    units = api.list_units(load_model(gpt2))
    prunable = {u.kind for u in units if u.prunable}
    assert {"attention", "mlp_up", "mlp_down"} <= prunable, [(u.id, u.excluded_reason) for u in units]


@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_attention_and_mlp_units_prune_and_the_cache_stays_consistent(gpt2, tmp_path, ratio):
    out = tmp_path / "pruned.onnx"
    result = api.prune_file(gpt2, out, PruneConfig(ratio, importance="magnitude"))
    assert result.reduction >= ratio
    assert any(u.endswith(".attention") for u in result.pruned_units)
    assert any(".mlp_" in u for u in result.pruned_units)
    onnx.checker.check_model(str(out), full_check=True)
    assert_cached_step_matches(open_session(str(out)))


def assert_cached_step_matches(session) -> None:
    """Prefill 8 tokens, then one cached step: its logits equal one uncached run over all 9."""
    ids = np.random.default_rng(0).integers(0, 128, size=(1, 9))
    names = [o.name for o in session.get_outputs()]
    first = dict(zip(names, session.run(None, _feeds(session, ids[:, :8]))))
    past = {n.replace("present", "past_key_values"): v for n, v in first.items() if n.startswith("present")}
    step = dict(zip(names, session.run(None, _feeds(session, ids[:, 8:], past))))
    full = dict(zip(names, session.run(None, _feeds(session, ids))))
    np.testing.assert_allclose(step["logits"][0, -1], full["logits"][0, -1], rtol=1e-4, atol=1e-4)
