"""Prune every prunable unit of every test model, one at a time, on a fresh session."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

import graphs
import helpers
from onnxdepth.errors import InvalidArgumentError, VerificationError
from onnxdepth.params import count_params_proto
from onnxdepth.prune.session import PruneSession
from onnxdepth.verify import verify_model


def _cases():
    cases = []
    for name, build in sorted(helpers.ALL_BUILDERS.items()):
        for unit in PruneSession(build()).units():
            if unit.prunable:
                cases.append(pytest.param(name, unit.id, id=f"{name}-{unit.id}"))
    return cases


CASES = _cases()


def test_every_model_has_prunable_units():
    """One case per prunable unit: per model, the 'prunable' column of helpers.EXPECTED_COUNTS (which
    test_units checks against each builder), so no model's cases can silently drop out."""
    per_model = Counter(c.values[0] for c in CASES)
    assert per_model == {name: counts[3] for name, counts in helpers.EXPECTED_COUNTS.items()}
    assert set(per_model) == set(helpers.ALL_BUILDERS) and all(per_model.values())


def _prune_one(name, unit_id):
    model = helpers.ALL_BUILDERS[name]()
    session = PruneSession(model)
    plan = session.plan(unit_id)
    session.apply(plan)
    return model, session, plan, session.to_model(model)


@pytest.mark.parametrize("name, unit_id", CASES)
def test_prune_one_unit(name, unit_id):
    model, session, plan, out = _prune_one(name, unit_id)
    assert plan.reason is None and plan.unit_id == unit_id

    onnx.checker.check_model(out, full_check=True)
    outputs = verify_model(out, model, session.input_shapes)
    assert outputs is not None and len(outputs) == len(model.graph.output)

    # Same output names and shapes as the original, by declaration and at run time.
    assert helpers.output_signature(out) == helpers.output_signature(model)
    reference = graphs.run(model, graphs.random_inputs(model))
    pruned = graphs.run(out, graphs.random_inputs(model))
    assert [r.shape for r in reference] == [p.shape for p in pruned]
    assert all(float(abs(p).max()) < 1e6 for p in pruned)

    # Exactly one layer fewer, and it is the pruned one.
    assert graphs.count_layers(out) == graphs.count_layers(model) - 1
    assert unit_id not in {n.name for n in out.graph.node}

    # Parameter bookkeeping: the plan's cost is exactly what disappears.
    before = count_params_proto(model)
    after = count_params_proto(out)
    assert session.params_before == before
    assert plan.params_removed > 0
    assert after < before
    assert after == before - plan.params_removed
    assert session.params() == after


@pytest.mark.parametrize("name, unit_id", CASES)
def test_pruned_unit_leaves_the_unit_list(name, unit_id):
    model = helpers.ALL_BUILDERS[name]()
    session = PruneSession(model)
    n_units = len(session.units())
    session.apply(session.plan(unit_id))
    remaining = session.units()
    assert unit_id not in {u.id for u in remaining}
    assert len(remaining) == n_units - 1
    assert session.pruned == [unit_id]


@pytest.mark.parametrize("name", sorted(helpers.ALL_BUILDERS))
def test_plan_is_pure(name):
    model = helpers.ALL_BUILDERS[name]()
    session = PruneSession(model)
    before_params = session.params()
    before_model = session.to_model(model).SerializeToString()
    prunable = [u for u in session.units() if u.prunable]
    assert len(prunable) == helpers.EXPECTED_COUNTS[name][3]
    for unit in prunable:
        session.plan(unit.id)
    assert session.params() == before_params
    assert session.to_model(model).SerializeToString() == before_model


@pytest.mark.parametrize("name", sorted(helpers.ALL_BUILDERS))
def test_prune_does_not_modify_the_source_model(name):
    model = helpers.ALL_BUILDERS[name]()
    before = model.SerializeToString()
    session = PruneSession(model)
    first = next(u for u in session.units() if u.prunable)  # every builder has one (see CASES)
    session.apply(session.plan(first.id))
    session.to_model(model)
    assert model.SerializeToString() == before


def test_apply_refuses_an_unprovable_unit():
    model = graphs.build_grouped()
    session = PruneSession(model)
    excluded = next(u for u in session.units() if (u.excluded_reason or "").startswith("unprovable coupling"))
    plan = session.plan(excluded.id)
    assert plan.reason is not None
    with pytest.raises(InvalidArgumentError, match="cannot be pruned"):
        session.apply(plan)
    assert session.params() == count_params_proto(model)


def test_plan_of_unknown_unit():
    session = PruneSession(graphs.build_mlp())
    with pytest.raises(InvalidArgumentError, match="no_such_unit"):
        session.plan("no_such_unit")


@pytest.mark.parametrize("name", ["cnn_channels", "upsample_concat"])
def test_plan_of_spatial_unit_is_refused(name):
    model = graphs.FAMILIES[name]()
    session = PruneSession(model)
    spatial = next(u for u in session.units() if u.excluded_reason == "changes spatial dims")
    plan = session.plan(spatial.id)
    assert plan.reason == "changes spatial dims"
    with pytest.raises(InvalidArgumentError, match="cannot be pruned"):
        session.apply(plan)
    assert session.pruned == [] and session.params() == count_params_proto(model)


def test_verification_is_not_vacuous():
    """verify_model does reject a model whose output signature changed."""
    model = graphs.build_cnn_channels()
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(VerificationError):
        verify_model(broken, model, {"x": (1, 3, 16, 16)})
