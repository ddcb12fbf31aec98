"""api.prune_model(model, PruneConfig(ratio)): Algorithm 9 until the reduction is reached, verified, plan in metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import graphs
import helpers
from onnxdepth.config import PruneConfig
from onnxdepth import api
from onnxdepth.errors import InvalidArgumentError, RatioUnreachableError
from onnxdepth.params import count_params_proto
from onnxdepth.verify import verify_model

# Largest reduction each family reaches (everything prunable pruned); 0.95 is out of reach for these.
UNREACHABLE_095 = ["mlp", "cnn_channels", "c2f_split", "depthwise", "sppf", "upsample_concat",
                   "grouped", "silu_gelu"]


def _plan(model: onnx.ModelProto) -> dict:
    entries = [p for p in model.metadata_props if p.key == api.PLAN_METADATA_KEY]
    assert len(entries) == 1
    return json.loads(entries[0].value)


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3])
def test_prune_to_ratio(family, model, ratio):
    before = count_params_proto(model)
    result = api.prune_model(model, PruneConfig(ratio))

    assert result.reduction >= ratio
    assert result.params_before == before
    assert result.params_after == count_params_proto(result.model)
    assert result.params_after < before
    assert result.reduction == pytest.approx(1 - result.params_after / before)
    assert len(result.pruned_units) >= 1
    assert len(set(result.pruned_units)) == len(result.pruned_units)

    outputs = verify_model(result.model, model, {"x": tuple(d.dim_value for d in
                                                            model.graph.input[0].type.tensor_type.shape.dim)})
    assert all(np.isfinite(o).all() for o in outputs)
    assert helpers.output_signature(result.model) == helpers.output_signature(model)
    assert graphs.count_layers(result.model) == graphs.count_layers(model) - len(result.pruned_units)
    remaining = {n.name for n in result.model.graph.node}
    assert not remaining & set(result.pruned_units)

    plan = _plan(result.model)
    assert plan["pruned_units"] == result.pruned_units
    assert plan["ratio"] == ratio
    assert plan["params_before"] == before and plan["params_after"] == result.params_after
    # One-image-input graphs without a label-free Taylor loss: angular distance on the graph outputs; the
    # MLP (no calibration data can be drawn for it): magnitude.
    assert plan["importance"] == ("magnitude" if family == "mlp" else "angular")
    assert plan["requested"]["importance"] == "auto"
    assert [s["unit"] for s in plan["steps"]] == result.pruned_units
    assert result.plan == plan


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_each_step_is_needed(family, model, ratio):
    """Algorithm 9 stops as soon as the ratio is reached: without its last step it was still short."""
    result = api.prune_model(model, PruneConfig(ratio))
    steps = []
    api.prune_model(model, PruneConfig(ratio, verify=False), on_step=lambda plan, reduction: steps.append(reduction))
    assert len(steps) == len(result.pruned_units)
    assert steps[-1] == pytest.approx(result.reduction)
    assert all(r < ratio for r in steps[:-1])
    assert steps == sorted(steps)


def _structure(model: onnx.ModelProto) -> list:
    """Ops, attributes and constant values in node order, ignoring tensor names."""
    inits = helpers.initializers(model)
    return [(n.op_type, n.name, [a.SerializeToString() for a in n.attribute],
             [inits[i].tobytes() for i in n.input if i in inits]) for n in model.graph.node]


def test_prune_is_deterministic(model):
    a = api.prune_model(model, PruneConfig(0.2))
    b = api.prune_model(model, PruneConfig(0.2))
    assert a.pruned_units == b.pruned_units
    assert _structure(a.model) == _structure(b.model)


def test_prune_is_byte_identical_when_repeated():
    model = graphs.build_concat()
    a = api.prune_model(model, PruneConfig(0.2))
    b = api.prune_model(model, PruneConfig(0.2))
    # The graph byte for byte; the plans (metadata) up to their wall-clock "seconds" fields.
    assert a.model.graph.SerializeToString() == b.model.graph.SerializeToString()
    assert _untimed(a.plan) == _untimed(b.plan)


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_prune_does_not_modify_the_input(model):
    before = model.SerializeToString()
    api.prune_model(model, PruneConfig(0.3))
    assert model.SerializeToString() == before


@pytest.mark.parametrize("name", UNREACHABLE_095)
def test_unreachable_ratio_095(name):
    model = graphs.FAMILIES[name]()
    with pytest.raises(RatioUnreachableError, match="largest reachable reduction") as info:
        api.prune_model(model, PruneConfig(0.95))
    assert 0.0 < info.value.reachable < 0.95
    assert f"{info.value.reachable:.4f}" in str(info.value)


def test_unreachable_ratio_reports_what_is_reachable(model):
    """.reachable is what pruning everything prunable gives: asking for exactly that succeeds."""
    with pytest.raises(RatioUnreachableError) as info:
        api.prune_model(model, PruneConfig(0.999))
    reachable = info.value.reachable
    assert 0.0 < reachable < 0.999
    result = api.prune_model(model, PruneConfig(reachable))
    assert result.reduction == pytest.approx(reachable, abs=1e-12)
    assert result.model.graph.node  # still a model


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_invalid_ratio(ratio):
    with pytest.raises(InvalidArgumentError, match="must be in"):
        api.prune_model(graphs.build_mlp(), PruneConfig(ratio))


@pytest.mark.parametrize("metric, message", [("cross_entropy", "needs a transformer"), ("angular", "needs a transformer"),
                                             ("nonsense", "unknown")])
def test_unsupported_importance(metric, message):
    with pytest.raises(InvalidArgumentError, match=message):
        api.prune_model(graphs.build_mlp(), PruneConfig(0.2, importance=metric))


def test_exclude_is_honoured_by_selection():
    model = graphs.build_residual()
    first = api.prune_model(model, PruneConfig(0.1)).pruned_units[0]
    result = api.prune_model(model, PruneConfig(0.1, exclude=f"^{first}$"))
    assert first not in result.pruned_units
    assert result.reduction >= 0.1
    assert _plan(result.model)["exclude"] == f"^{first}$"


@pytest.mark.parametrize("ordering", ["descending", "random"])
def test_cnn_orderings_for_ablation(ordering):
    """Algorithm 9 with line 7 picking the highest-scoring or a random unit (Table 4.5's ablation)."""
    model = graphs.FAMILIES["residual"]()
    ascending = api.prune_model(model, PruneConfig(0.3))
    other = api.prune_model(model, PruneConfig(0.3, ordering=ordering, seed=1))
    assert other.reduction >= 0.3
    assert other.pruned_units != ascending.pruned_units
    again = api.prune_model(model, PruneConfig(0.3, ordering=ordering, seed=1))
    assert again.pruned_units == other.pruned_units  # reproducible


def test_descending_prunes_the_highest_score_first():
    from onnxdepth.prune.session import PruneSession

    model = graphs.FAMILIES["residual"]()
    plans = PruneSession(model).prunable_plans()
    result = api.prune_model(model, PruneConfig(0.01, ordering="descending"))
    assert result.pruned_units[0] == max(plans, key=lambda p: (p.score, p.unit_id)).unit_id


def test_checkpoints_equal_separate_runs():
    """The model handed over at a checkpoint is the one a separate run to that ratio gives (a prefix)."""
    import numpy as np
    import onnxruntime as ort

    from onnxdepth.api import prune_model

    model = graphs.build_residual()
    seen = {}
    # No refits: a checkpoint would need its own (auto resolves to none with checkpoints).
    final = prune_model(model, PruneConfig(0.5, compensate="none"), checkpoints=[0.1, 0.3],
                        on_checkpoint=lambda r, res: seen.setdefault(r, res))
    assert sorted(seen) == [0.1, 0.3]
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    for ratio, result in seen.items():
        alone = prune_model(model, PruneConfig(ratio, compensate="none"))
        assert result.pruned_units == alone.pruned_units and result.reduction >= ratio
        assert result.plan["ratio"] == ratio and result.plan["steps"] == alone.plan["steps"]
        run = [ort.InferenceSession(m.model.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {"x": x})[0] for m in (result, alone)]
        np.testing.assert_array_equal(run[0], run[1])
        assert final.pruned_units[:len(result.pruned_units)] == result.pruned_units


def test_reduced_search_space_prunes_only_channel_keeping_units():
    """--search-space reduced (the thesis's CNN baseline): no unit that changes channels is ever pruned."""
    from onnxdepth.prune.session import PruneSession

    model = graphs.build_residual()  # has an 8->12->8 block: two channel-changing convs
    full = {u.id: u for u in PruneSession(model).units()}
    reduced = {u.id: u for u in PruneSession(model, search_space="reduced").units()}
    changing = {uid for uid, u in full.items() if u.prunable and u.changes_channels}
    assert changing, "the test graph must have channel-changing units"
    for uid in changing:
        assert not reduced[uid].prunable and "reduced search space" in reduced[uid].excluded_reason
    assert {uid for uid, u in reduced.items() if u.prunable} == {uid for uid, u in full.items()
                                                                  if u.prunable and not u.changes_channels}
    result = api.prune_model(model, PruneConfig(0.2, search_space="reduced"))
    assert result.plan["search_space"] == "reduced" and result.pruned_units and result.plan["steps"]
    assert not set(result.pruned_units) & changing
    assert all(step["removed_channels"] == 0 for step in result.plan["steps"])
    with pytest.raises(InvalidArgumentError, match="--search-space"):
        PruneSession(model, search_space="tiny")


def test_cli_units_and_prune_reduced(cli, tmp_path):
    import onnx as _onnx

    src = tmp_path / "cnn.onnx"
    _onnx.save(graphs.build_residual(), str(src))
    code, out, err = cli("units", src, "--search-space", "reduced", "--json")
    assert code == 0, err
    units = json.loads(out)["units"]
    channel_keeping = {u["id"] for u in units if u["prunable"]}
    assert channel_keeping and all(not u["changes_channels"] for u in units if u["prunable"])
    code, out, err = cli("prune", src, tmp_path / "out.onnx", "--ratio", "0.2", "--search-space", "reduced", "--json")
    assert code == 0, err
    pruned = json.loads(out)["pruned_units"]
    assert pruned, "prune --ratio 0.2 must prune at least one unit"
    assert set(pruned) <= channel_keeping
