"""Angular importance on a CNN's graph outputs (leave-one-out, `importance.output_damage`) and the CNN
re-scoring search that re-measures it as the model is pruned (`importance.output_search`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxdepth import api
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.errors import InvalidArgumentError
from onnxdepth.importance.output_damage import _channel_stats, output_damage_scores, standardised_distance
from onnxdepth.prune.session import PruneSession
from onnxdepth.runtime import open_session

import graphs


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Calibration:
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    images = np.random.default_rng(0).uniform(0, 1, size=(24, 3, 16, 16)).astype(np.float32)
    np.savez(path, images=images)
    return Calibration(str(path))


def test_standardised_distance_is_zero_for_equal_outputs_and_weighs_channels_alike():
    rng = np.random.default_rng(1)
    # Axis 1: channel 0 in pixels (scale 300), channel 1 a probability (scale 0.01).
    reference = np.stack([rng.normal(size=(1, 50)) * 300.0, rng.normal(size=(1, 50)) * 0.01], axis=1)
    mean, spread = _channel_stats([reference])
    assert standardised_distance(reference, reference, mean, spread) == 0.0
    big, small = reference.copy(), reference.copy()
    big[:, 0] *= 1.1  # a 10% change of the large channel
    small[:, 1] *= 1.1  # the same relative change of the small one
    d_big = standardised_distance(big, reference, mean, spread)
    d_small = standardised_distance(small, reference, mean, spread)
    assert d_big > 0 and d_small > 0
    assert d_small == pytest.approx(d_big, rel=0.2)  # unstandardised, d_small would be ~1e-5 of d_big


def test_scores_are_each_units_measured_output_distance(calib):
    model = graphs.build_residual()
    session = PruneSession(model)
    scores = output_damage_scores(model, session, calib, count=8, show_progress=False)
    prunable = {p.unit_id for p in session.prunable_plans()}
    assert set(scores) == prunable and len(prunable) >= 3
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert len(set(scores.values())) > 1  # units differ
    # Re-measure one unit by hand: prune it alone and compare outputs on the same images.
    from onnxdepth.compensate.images import image_inputs

    images, _ = image_inputs(model, session, calib, count=8, held_out=0)
    unit = max(scores, key=scores.get)
    copy = PruneSession(model)
    copy.apply(copy.plan(unit))
    reference = [open_session(model).run(None, {"x": x})[0] for x in images]
    pruned = [open_session(copy.to_model(model)).run(None, {"x": x})[0] for x in images]
    mean, spread = _channel_stats(reference)
    expected = np.mean([standardised_distance(p, r, mean, spread) for p, r in zip(pruned, reference)])
    assert scores[unit] == pytest.approx(expected, rel=1e-9)
    assert output_damage_scores(model, session, calib, count=8, show_progress=False) == scores  # deterministic


def test_prune_with_angular_on_a_cnn_takes_the_lowest_measured_unit_first(calib):
    model = graphs.build_residual()
    scores = output_damage_scores(model, PruneSession(model), calib, show_progress=False)
    result = api.prune_model(model, PruneConfig(0.1, importance="angular", compensate="none", calibration=calib))
    assert result.reduction >= 0.1
    assert result.pruned_units[0] == min(scores, key=lambda u: (scores[u], u))
    assert result.plan["importance"] == "angular"


def test_cnn_rescoring_search_prunes_to_the_ratio_and_records_it(calib):
    model = graphs.build_residual()
    config = PruneConfig(0.2, importance="angular", rescore_every=1, calibration=calib)
    result = api.prune_model(model, config)
    assert result.reduction >= 0.2
    assert result.plan["selection"] == "rescore"
    assert result.plan["compensation"]["method"] == "lstsq"
    again = api.prune_model(model, config)
    assert again.pruned_units == result.pruned_units  # deterministic
    json.dumps(result.plan)


def test_cnn_rescoring_needs_angular(calib):
    with pytest.raises(InvalidArgumentError, match="needs --importance angular"):
        api.prune_model(graphs.build_residual(), PruneConfig(0.2, importance="magnitude", rescore_every=1,
                                                             calibration=calib))


def test_angular_on_a_model_without_an_image_input_is_refused():
    with pytest.raises(InvalidArgumentError, match="needs a transformer"):
        api.prune_model(graphs.build_mlp(), PruneConfig(0.2, importance="angular"))
