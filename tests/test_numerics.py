"""What the pruned models compute, compared with the original or with hand-built reference models."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest

import graphs
import helpers
from onnxdepth.config import PruneConfig
from onnxdepth import api
from onnxdepth.params import count_params_proto
from onnxdepth.prune.session import PruneSession

# -- ratio 0 ----------------------------------------------------------------------------------------------

def test_ratio_zero_is_bit_identical(model):
    result = api.prune_model(model, PruneConfig(0.0))
    assert result.pruned_units == []
    assert result.params_after == result.params_before == count_params_proto(model)
    assert result.reduction == 0.0
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    for seed in (0, 1):
        expected, actual = helpers.run_both(model, result.model, seed)
        assert len(expected) == len(actual)
        for e, a in zip(expected, actual):
            assert np.array_equal(e, a)
    plan = json.loads(next(p.value for p in result.model.metadata_props if p.key == api.PLAN_METADATA_KEY))
    assert plan["pruned_units"] == [] and plan["ratio"] == 0.0


# -- exact identity layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["identity_layer", "identity_matmul"])
def test_pruning_an_identity_layer_keeps_outputs(name):
    model = helpers.ALL_BUILDERS[name]()
    inits = helpers.initializers(model)

    def is_identity(node):
        w = np.squeeze(inits[node.input[1]])
        biases = [inits[i] for i in node.input[2:]]
        return w.ndim == 2 and np.array_equal(w, np.eye(len(w))) and all(not b.any() for b in biases)

    identity_nodes = [n.name for n in helpers.layer_nodes(model) if is_identity(n)]
    assert len(identity_nodes) == 1
    session = PruneSession(model)
    units = {u.id: u for u in session.units()}
    unit_id = identity_nodes[0]
    assert unit_id == {"identity_layer": "conv_1", "identity_matmul": "matmul_1"}[name]
    assert units[unit_id].prunable and not units[unit_id].changes_channels

    session.apply(session.plan(unit_id))
    out = session.to_model(model)
    assert graphs.count_layers(out) == graphs.count_layers(model) - 1
    for seed in (0, 1, 2):
        expected, actual = helpers.run_both(model, out, seed)
        np.testing.assert_allclose(actual[0], expected[0], atol=1e-5, rtol=0)

    # Pruning a non-identity layer of the same model does change the outputs (the check above can fail).
    other = next(u.id for u in units.values() if u.prunable and u.id != unit_id)
    s2 = PruneSession(model)
    s2.apply(s2.plan(other))
    expected, actual = helpers.run_both(model, s2.to_model(model))
    assert not np.allclose(actual[0], expected[0], atol=1e-5)


# -- same-width units: the pruned model is the model without that layer -----------------------------------

def _same_width_cases():
    cases = []
    for name, build in sorted(helpers.ALL_BUILDERS.items()):
        for unit in PruneSession(build()).units():
            if unit.prunable and not unit.changes_channels:
                cases.append(pytest.param(name, unit.id, id=f"{name}-{unit.id}"))
    return cases


SAME_WIDTH_CASES = _same_width_cases()


def test_same_width_cases_cover_every_channel_keeping_unit():
    """An empty case list would only skip the test below: pin it to the 'prunable and channel-preserving'
    column of helpers.EXPECTED_COUNTS, model by model."""
    per_model = collections.Counter(c.values[0] for c in SAME_WIDTH_CASES)
    assert per_model == {name: counts[4] for name, counts in helpers.EXPECTED_COUNTS.items() if counts[4]}


@pytest.mark.parametrize("name, unit_id", SAME_WIDTH_CASES)
def test_same_width_unit_equals_model_without_the_layer(name, unit_id):
    """Pruning a layer that keeps the width equals deleting that layer and its own bias/norm/activation."""
    model = helpers.ALL_BUILDERS[name]()
    layer = helpers.node_by_name(model, unit_id)
    reference = helpers.bypass(model, layer.input[0], helpers.block_end(model, layer))
    onnx.checker.check_model(reference, full_check=True)

    session = PruneSession(model)
    session.apply(session.plan(unit_id))
    out = session.to_model(model)

    assert count_params_proto(out) == count_params_proto(reference)
    assert sorted(n.op_type for n in out.graph.node) == sorted(n.op_type for n in reference.graph.node)
    for seed in (0, 1):
        feeds = graphs.random_inputs(model, seed)
        np.testing.assert_allclose(graphs.run(out, feeds)[0], graphs.run(reference, feeds)[0], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("unit_index", [
    pytest.param(0, id="conv_0"),
    pytest.param(1, id="conv_1"),
    pytest.param(2, id="conv_2"),
])
def test_batchnorm_prune_keeps_other_layers_norms(unit_index):
    """After pruning one conv, every surviving conv is still followed by its own BatchNormalization."""
    model = graphs.build_batchnorm()
    convs = helpers.layer_nodes(model)
    own_bn = {c.name: helpers.consumers(model, c.output[0])[0].name for c in convs[:-1]}
    assert all(helpers.node_by_name(model, bn).op_type == "BatchNormalization" for bn in own_bn.values())
    unit_id = convs[unit_index].name
    session = PruneSession(model)
    session.apply(session.plan(unit_id))
    out = session.to_model(model)
    survivors = {n.name for n in out.graph.node}
    assert own_bn[unit_id] not in survivors  # the pruned conv's own post-norm goes with it (README)
    for conv, bn in own_bn.items():
        if conv != unit_id:
            assert conv in survivors
            assert bn in survivors, f"pruning {unit_id} removed {bn}, the norm of {conv}"


# -- residual blocks --------------------------------------------------------------------------------------

def _residual_blocks(model):
    """(block input tensor, [branch conv names], Add node) for each residual Add."""
    blocks = []
    for add in (n for n in model.graph.node if n.op_type == "Add"):
        skip, branch_out = add.input
        convs, t = [], branch_out
        while t != skip:
            node = helpers.producer(model, t)
            if node.op_type == "Conv":
                convs.append(node.name)
            t = node.input[0]
        blocks.append((skip, convs[::-1], add))
    return blocks


@pytest.mark.parametrize("block", [0, 1, 2])
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_pruning_both_convs_of_a_residual_block_removes_the_block(block, order):
    model = graphs.build_residual()
    blocks = _residual_blocks(model)
    assert len(blocks) == 3 and all(len(convs) == 2 for _, convs, _ in blocks)
    skip, convs, add = blocks[block]
    session = PruneSession(model)
    for unit_id in (convs if order == "forward" else convs[::-1]):
        session.apply(session.plan(unit_id))
    out = session.to_model(model)
    onnx.checker.check_model(out, full_check=True)

    assert helpers.count_ops(out, "Add") == helpers.count_ops(model, "Add") - 1
    assert add.name not in {n.name for n in out.graph.node}
    assert graphs.count_layers(out) == graphs.count_layers(model) - 2

    # Exactly the model without that block: x + 0 -> x, not 2x. (For the 8 -> 12 -> 8 block the first
    # prune width-slices the second conv's input; once both are gone nothing of the block is left.)
    reference = helpers.bypass(model, skip, add.output[0])
    assert count_params_proto(out) == count_params_proto(reference)
    for seed in (0, 1):
        expected, actual = helpers.run_both(reference, out, seed)
        np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5, atol=1e-5)


def test_pruning_one_conv_of_a_residual_block_keeps_the_add():
    model = graphs.build_residual()
    _, convs, add = _residual_blocks(model)[0]
    session = PruneSession(model)
    session.apply(session.plan(convs[1]))
    out = session.to_model(model)
    assert helpers.count_ops(out, "Add") == helpers.count_ops(model, "Add")
    assert add.name in {n.name for n in out.graph.node}


# -- C2f split: duplicate Concat input -------------------------------------------------------------------

@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_c2f_bottleneck_pruned_drops_duplicate_concat_input(order):
    model = graphs.build_c2f_split()
    split = next(n for n in model.graph.node if n.op_type == "Split")
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    [(skip, bottleneck, add)] = _residual_blocks(model)  # b + m(b): the bottleneck's two convs
    assert skip == split.output[1] and len(bottleneck) == 2
    assert len(concat.input) == 3 and list(concat.input[:2]) == list(split.output)
    post = helpers.consumers(model, concat.output[0])[0]
    inits = helpers.initializers(model)
    w_post = inits[post.input[1]]
    assert w_post.shape[1] == 24

    session = PruneSession(model)
    plans = []
    for unit_id in (bottleneck if order == "forward" else bottleneck[::-1]):
        plans.append(session.plan(unit_id))
        session.apply(plans[-1])
    out = session.to_model(model)
    onnx.checker.check_model(out, full_check=True)

    new_concat = helpers.node_by_name(out, concat.name)
    assert list(new_concat.input) == list(split.output)  # the residual Add collapsed to b: duplicate dropped
    assert add.name not in {n.name for n in out.graph.node}
    new_post = helpers.node_by_name(out, post.name)
    new_w = helpers.initializers(out)[new_post.input[1]]
    assert new_w.shape == (16, 16, 1, 1)
    np.testing.assert_array_equal(new_w, w_post[:, :16])  # the first copy of b is kept

    # Patching removed the duplicate's 16 x 8 weights on top of the two plans.
    before = count_params_proto(model)
    after = count_params_proto(out)
    assert after == before - sum(p.params_removed for p in plans) - 16 * 8

    # Numerically: Concat(a, b) into the sliced 1x1 conv.
    reference = helpers.bypass(model, split.output[1], add.output[0])
    ref_concat = helpers.node_by_name(reference, concat.name)
    del ref_concat.input[2]
    helpers.replace_initializer(reference, post.input[1], w_post[:, :16].copy())
    onnx.checker.check_model(reference, full_check=True)
    expected, actual = helpers.run_both(reference, out)
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unit_index", [0, 2], ids=["matmul_0", "matmul_1"])
def test_matmul_bias_is_pruned_with_its_layer(unit_index):
    model = graphs.build_mlp()
    inits = helpers.initializers(model)
    layer = helpers.layer_nodes(model)[unit_index]
    assert layer.op_type == "MatMul"
    bias_add = helpers.consumers(model, layer.output[0])[0]
    assert bias_add.op_type == "Add" and bias_add.input[1] in inits
    session = PruneSession(model)
    session.apply(session.plan(layer.name))
    out = session.to_model(model)
    assert bias_add.name not in {n.name for n in out.graph.node}
