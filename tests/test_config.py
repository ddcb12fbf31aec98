"""PruneConfig and Calibration (validated once, recorded in the plan), ScoreTable files, strategy choice."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import graphs
from onnxdepth import __version__, api
from onnxdepth.config import Calibration, PruneConfig
from onnxdepth.errors import InvalidArgumentError
from onnxdepth.scores import ScoreTable
from onnxdepth.strategies import STRATEGIES, strategy_for


@pytest.mark.parametrize("options, message", [
    ({"ratio": 1.0}, "--ratio 1: must be in"),
    ({"ratio": -0.1}, "--ratio -0.1: must be in"),
    ({"importance": "psychic"}, "--importance psychic: unknown metric"),
    ({"granularity": "atoms"}, "--granularity atoms: expected one of fine, sublayer, block"),
    ({"ordering": "sideways"}, "--ordering sideways"),
    ({"ranking": "elo"}, "--ranking elo"),
    ({"block_choice": "best"}, "--block-choice best"),
    ({"search_space": "tiny"}, "--search-space tiny"),
    ({"rescore_every": 0}, "--rescore-every 0: must be at least 1"),
    ({"rescore_every": 1, "shortlist": 0}, "--shortlist 0: must be at least 1"),
    ({"shortlist": 2}, "--shortlist only applies with --rescore-every"),
])
def test_config_refuses_bad_options(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        PruneConfig(**{"ratio": 0.2, **options})


@pytest.mark.parametrize("options, message", [
    ({"sequences": 0}, "--calib-sequences 0"), ({"length": 0}, "--calib-length 0"),
    ({"held_out_sequences": -1}, "held-out sequences -1"),
])
def test_calibration_refuses_bad_sizes(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Calibration(**options)


def test_plan_records_every_option_and_the_strategy():
    calibration = Calibration("calib.npz", sequences=4, length=16, seed=3)
    config = PruneConfig(0.2, ordering="random", seed=3, calibration=calibration, input_shapes={"x": (2, 16)})
    result = api.prune_model(graphs.build_mlp(), config)
    plan = result.plan
    assert plan["onnxdepth_version"] == __version__ and plan["selection"] == "iterative"
    resolved = {"importance": "magnitude", "granularity": "fine", "compensate": "none"}  # auto on an MLP
    for name, value in config.to_json().items():
        assert plan[name] == resolved.get(name, value), name
    assert plan["calibration"] == {"source": "calib.npz", "sequences": 4, "length": 16, "seed": 3,
                                   "model_path": None, "held_out_sequences": 8, "fidelity_sequences": 16}
    assert plan["input_shapes"] == {"x": [2, 16]} and "verify" not in plan
    # What was asked, before `auto` was resolved (prune_file_cached compares these).
    assert plan["requested"] == {"importance": "auto", "granularity": "auto", "compensate": "auto"}
    # The metadata copy in the model is the same record.
    stored = next(p.value for p in result.model.metadata_props if p.key == api.PLAN_METADATA_KEY)
    assert json.loads(stored) == plan


def test_ratio_zero_plan_has_no_strategy():
    assert api.prune_model(graphs.build_mlp(), PruneConfig(0.0)).plan["selection"] is None


@pytest.mark.parametrize("options, transformer, expected", [
    ({}, False, "iterative"), ({"importance": "taylor"}, False, "iterative"), ({}, True, "ranked"),
    ({"granularity": "block", "importance": "angular"}, True, "gromov"),
    ({"granularity": "block", "importance": "angular", "block_choice": "ranking"}, True, "ranked"),
    ({"granularity": "block", "importance": "angular", "ordering": "random"}, True, "ranked"),
    ({"importance": "angular", "ranking": "grouped"}, True, "grouped"),
    ({"importance": "angular", "rescore_every": 2}, True, "rescore"),
    ({"importance": "angular", "rescore_every": 2, "ranking": "grouped"}, True, "rescore"),
])
def test_strategy_for(options, transformer, expected):
    strategy = strategy_for(PruneConfig(0.2, **options), transformer)
    assert strategy.name == expected
    assert strategy.prefix_stable == (expected != "gromov")
    assert [s.name for s in STRATEGIES].count(expected) == 1


def test_held_out_rows_of_an_npz_follow_the_calibration_rows(tmp_path):
    rows = np.arange(10 * 4, dtype=np.int64).reshape(10, 4)  # row r holds 4r .. 4r + 3: rows are told apart
    np.savez(tmp_path / "calib.npz", input_ids=rows)
    calibration = Calibration(str(tmp_path / "calib.npz"), sequences=6, length=4, held_out_sequences=3,
                              model_path=str(tmp_path / "model.onnx"))
    assert np.array_equal(calibration.tokens(), rows[:6]) and np.array_equal(calibration.held_out_tokens(), rows[6:9])
    plain = replace(calibration, held_out_sequences=0)
    assert np.array_equal(plain.tokens(), rows[:6]) and plain.held_out_tokens().shape == (0, 4)
    with pytest.raises(InvalidArgumentError, match="no rows left for held-out checks"):
        replace(calibration, sequences=10).held_out_tokens()


def test_held_out_text_windows_share_no_token_with_the_calibration_windows(tmp_path, monkeypatch):
    from onnxdepth import calibration as calibration_module

    ids = np.arange(5000, dtype=np.int64)  # token i at position i: a window is told by its first token
    monkeypatch.setattr(calibration_module, "_text_ids", lambda calib, model_path: ids)
    text = tmp_path / "calib.txt"
    text.write_text("unused: the ids are stubbed")
    calibration = Calibration(str(text), sequences=8, length=64, held_out_sequences=5,
                              model_path=str(tmp_path / "model.onnx"))
    calib, held = calibration.tokens(), calibration.held_out_tokens()
    assert calib.shape == (8, 64) and held.shape == (5, 64)
    used = set(calib.ravel().tolist())
    assert not used & set(held.ravel().tolist())
    assert all(np.array_equal(row, np.arange(row[0], row[0] + 64)) for row in held)  # contiguous windows
    # The calibration windows are the ones a run without held-out windows takes.
    assert np.array_equal(replace(calibration, held_out_sequences=0).tokens(), calib)
    with pytest.raises(InvalidArgumentError, match="too short for held-out windows"):
        replace(calibration, sequences=40).held_out_tokens()


def test_calibration_for_model_fills_only_a_missing_path():
    assert Calibration().for_model("a/model.onnx").model_path == "a/model.onnx"
    assert Calibration(model_path="b.onnx").for_model("a/model.onnx").model_path == "b.onnx"


def test_score_table_csv_round_trip(tmp_path):
    table = ScoreTable.from_run_table({"layer0.block": 0.1, "layer1.block": 0.8},
                                      [[0.0, 0.1, 0.3], [0.0, 0.8]])
    path = tmp_path / "scores.csv"
    path.write_text(table.to_csv())
    lines = path.read_text().splitlines()
    assert lines[0] == "unit,score" and lines[1].split(",")[1] == "0.1" and len(lines) == 1 + 5
    again = ScoreTable.read_csv(str(path))
    assert again.units == table.units and again.run_table(2) == [[0.0, 0.1, 0.3], [0.0, 0.8]]
    assert again.run_table(3) is None  # a run of the third layer is missing
    path.write_text("unit,score\n")
    with pytest.raises(InvalidArgumentError, match="empty score table"):
        ScoreTable.read_csv(str(path))
    path.write_text("unit,score\nlayer0.block,abc\n")
    with pytest.raises(InvalidArgumentError, match="expected CSV columns unit,score"):
        ScoreTable.read_csv(str(path))
