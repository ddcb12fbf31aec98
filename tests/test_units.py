"""PruneSession.units(): one unit per Conv/MatMul/Gemm, with the right exclusions, and units_summary."""

from __future__ import annotations

import re

import pytest

import graphs
import helpers
from onnxdepth import api
from onnxdepth.errors import InvalidArgumentError
from onnxdepth.prune.session import PruneSession

HEAD = "graph head"
USER = "user exclude"
SPATIAL = "changes spatial dims"
COUPLING = "unprovable coupling"

ALL = sorted(helpers.ALL_BUILDERS)

EXPECTED_COUNTS = helpers.EXPECTED_COUNTS


def _units(name, **kwargs):
    model = helpers.ALL_BUILDERS[name]()
    return model, PruneSession(model, **kwargs).units()


def test_expected_counts_cover_every_builder():
    assert set(EXPECTED_COUNTS) == set(helpers.ALL_BUILDERS)


@pytest.mark.parametrize("name", ALL)
def test_one_unique_unit_per_layer(name):
    model, units = _units(name)
    ids = [u.id for u in units]
    assert len(ids) == len(set(ids)), f"duplicate unit ids: {ids}"
    layers = {n.name: n.op_type for n in helpers.layer_nodes(model)}
    assert len(units) == graphs.EXPECTED_LAYER_COUNTS[name] == graphs.count_layers(model)
    assert set(ids) == set(layers)
    for unit in units:
        assert unit.op in ("Conv", "MatMul", "Gemm")
        assert unit.op == layers[unit.id]
        assert unit.params > 0
        assert unit.prunable == (unit.excluded_reason is None)


@pytest.mark.parametrize("name", ALL)
def test_unit_channels_match_weights(name):
    model, units = _units(name)
    inits = helpers.initializers(model)
    for unit in units:
        node = helpers.node_by_name(model, unit.id)
        w = inits[node.input[1]]
        if node.op_type == "Conv":
            expected = (w.shape[1] * helpers.attr(node, "group", 1), w.shape[0])
        elif node.op_type == "MatMul":
            expected = (w.shape[0], w.shape[1])
        else:  # Gemm, transB=1 in the builders
            assert helpers.attr(node, "transB") == 1
            expected = (w.shape[1], w.shape[0])
        assert (unit.in_channels, unit.out_channels) == expected, unit
        assert unit.changes_channels == (expected[0] != expected[1])


@pytest.mark.parametrize("name", ALL)
def test_unit_params(name):
    """An excluded unit reports its own weights; a prunable one what its plan removes (at least its own)."""
    model, units = _units(name)
    inits = helpers.initializers(model)
    session = PruneSession(model)
    for unit in units:
        node = helpers.node_by_name(model, unit.id)
        own = sum(inits[i].size for i in node.input[1:] if i in inits)
        # Every unit reports what its plan removes: at least its own weights (plus a MatMul's bias Add,
        # coupled activations/norms and, when prunable, the reconciled widths).
        assert unit.params == session.plan(unit.id).params_removed
        assert unit.params >= own


@pytest.mark.parametrize("name", ALL)
def test_last_layer_is_graph_head(name):
    model, units = _units(name)
    by_id = {u.id: u for u in units}
    for out in model.graph.output:
        last = helpers.producer(model, out.name)
        while last.op_type not in helpers.LAYER_OPS:  # e.g. a bias Add after MatMul
            last = helpers.producer(model, next(i for i in last.input if helpers.producer(model, i)))
        assert by_id[last.name].excluded_reason == HEAD
        assert not by_id[last.name].prunable


@pytest.mark.parametrize("name", ALL)
def test_exclusion_counts(name):
    _, units = _units(name)
    head = sum(u.excluded_reason == HEAD for u in units)
    spatial = sum(u.excluded_reason == SPATIAL for u in units)
    coupling = sum((u.excluded_reason or "").startswith(COUPLING) for u in units)
    prunable = sum(u.prunable for u in units)
    reduced = sum(u.prunable and not u.changes_channels for u in units)
    assert (head, spatial, coupling, prunable, reduced) == EXPECTED_COUNTS[name]
    assert head + spatial + coupling + prunable == len(units), [u.excluded_reason for u in units]


@pytest.mark.parametrize("name", ALL)
def test_spatial_units_are_the_strided_convs(name):
    model, units = _units(name)
    strided = {n.name for n in model.graph.node
               if n.op_type == "Conv" and any(s != 1 for s in helpers.attr(n, "strides", [1]))}
    assert {u.id for u in units if u.excluded_reason == SPATIAL} == strided


def test_cnn_channels_has_exactly_one_spatial_unit():
    model, units = _units("cnn_channels")
    spatial = [u for u in units if u.excluded_reason == SPATIAL]
    assert len(spatial) == 1
    node = helpers.node_by_name(model, spatial[0].id)
    assert helpers.attr(node, "strides") == [2, 2]
    assert not spatial[0].prunable


def test_grouped_excludes_the_conv_feeding_the_grouped_conv():
    model, units = _units("grouped")
    grouped = [n for n in model.graph.node if n.op_type == "Conv" and helpers.attr(n, "group", 1) > 1]
    assert len(grouped) == 1
    # Walk back from the grouped conv through the activation to the conv that feeds it.
    feeder = helpers.producer(model, grouped[0].input[0])
    while feeder.op_type != "Conv":
        feeder = helpers.producer(model, feeder.input[0])
    by_id = {u.id: u for u in units}
    assert by_id[feeder.name].excluded_reason.startswith("unprovable coupling")
    assert not by_id[feeder.name].prunable
    # The grouped conv itself keeps its width (8 -> 8) and is prunable.
    assert by_id[grouped[0].name].prunable


def test_concat_diamond_is_not_a_head_branch():
    """Two branches from one fork that re-merge (Concat) are a block: only the last conv is head."""
    model, units = _units("concat")
    head = [u.id for u in units if u.excluded_reason == HEAD]
    assert head == [helpers.producer(model, model.graph.output[0].name).name]
    assert sum(u.prunable for u in units) == 4


@pytest.mark.parametrize("name", ALL)
def test_user_exclude(name):
    model, units = _units(name)
    target = next(u for u in units if u.prunable)
    _, excluded = _units(name, exclude=f"^{re.escape(target.id)}$")
    before = {u.id: u.excluded_reason for u in units}
    after = {u.id: u.excluded_reason for u in excluded}
    assert after[target.id] == USER
    assert next(u for u in excluded if u.id == target.id).prunable is False
    # Nothing else changes.
    assert {k: v for k, v in after.items() if k != target.id} == \
        {k: v for k, v in before.items() if k != target.id}
    summary = api.units_summary(excluded)
    assert summary["user_excluded"] == 1
    assert summary["prunable"] == api.units_summary(units)["prunable"] - 1


def test_exclude_regex_matches_several_units_but_head_wins():
    _, units = _units("residual", exclude="conv_[0-9]")  # matches every unit, head included
    reasons = [u.excluded_reason for u in units]
    assert reasons.count(HEAD) == 1
    assert reasons.count(USER) == len(units) - 1
    assert not any(u.prunable for u in units)


def test_invalid_exclude_regex_is_an_argument_error():
    with pytest.raises(InvalidArgumentError, match="--exclude"):
        PruneSession(graphs.build_mlp(), exclude="conv_[")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("exclude", [None, "0$"])
def test_units_summary_is_consistent(name, exclude):
    model = helpers.ALL_BUILDERS[name]()
    units = api.list_units(model, exclude=exclude)
    s = api.units_summary(units)
    assert s["prunable"] + sum(s["excluded"].values()) == s["candidates"]
    assert s["candidates"] + s["head"] + s["user_excluded"] == len(units)
    assert s["prunable"] == sum(u.prunable for u in units)
    assert s["prunable_reduced"] == sum(u.prunable and not u.changes_channels for u in units)
    assert 0 <= s["prunable_reduced"] <= s["prunable"] <= s["candidates"]
    assert s["head"] == EXPECTED_COUNTS[name][0]
    if exclude is None:
        assert s["user_excluded"] == 0
    for key in s["excluded"]:
        assert ":" not in key and key not in (HEAD, USER)


def test_units_summary_groups_coupling_reasons():
    s = api.units_summary(api.list_units(graphs.build_grouped()))
    assert s["excluded"] == {"unprovable coupling": 1}
    s = api.units_summary(api.list_units(graphs.build_cnn_channels()))
    assert s["excluded"] == {"changes spatial dims": 1}


@pytest.mark.parametrize("name", ALL)
def test_units_does_not_modify_the_model(name):
    model = helpers.ALL_BUILDERS[name]()
    before = model.SerializeToString()
    PruneSession(model).units()
    assert model.SerializeToString() == before


# -- symbolic dimension expressions (never evaluated as Python) -------------------------------------------------
@pytest.mark.parametrize("text, expected", [("past_sequence_length + sequence_length", 128), ("2*batch", 2),
                                            ("seq - 1", 63), ("9**9**9**9", None), ("(seq)", None),
                                            ("__import__('os')", None), ("99999999999 * 99999999999", None),
                                            ("seq - seq", None), ("x" * 300, None)])
def test_dim_expressions_are_parsed_with_bounds(text, expected):
    from onnxdepth.graph.shapes import dim_expression

    assert dim_expression(text, {"batch": 1, "seq": 64}) == expected


def test_a_huge_dim_expression_is_refused_quickly(cli, save_model):
    import time

    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["9**9**9**9", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), "huge.onnx")
    started = time.perf_counter()
    code, _, err = cli("units", path)
    assert time.perf_counter() - started < 10
    assert code in (0, 1) and "Traceback" not in err
