"""Grouped moves (`--ranking grouped`) and re-scoring (`--rescore-every`, `--shortlist`) on the tiny Llama.

The checks that can fail in interesting ways:
- a whole-layer move is the identity: its angular score is the distance between the layer's input and
  output, and its cross-entropy score is block granularity's cross-entropy score of that layer;
- a move's parameter count is what applying it to the whole model removes (the cut-out layer also
  holds the embedding, which must not be counted);
- the searches reach the ratio with valid models whose plans replay exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("optimum")
pytest.importorskip("optimum.exporters.onnx")

from onnxdepth.api import prune_model, replay_plan, score_units  # noqa: E402
from onnxdepth.calibration import calibration_tokens  # noqa: E402
from onnxdepth.config import Calibration, PruneConfig  # noqa: E402
from onnxdepth.errors import InvalidArgumentError  # noqa: E402
from onnxdepth.importance.angular import _mean_distance, cache_layers, layer_boundaries, score_moves  # noqa: E402
from onnxdepth.importance.cross_entropy import chained_measure, reference_distribution  # noqa: E402
from onnxdepth.prune.session import PruneSession  # noqa: E402
from onnxdepth.rescore import layer_moves  # noqa: E402
from onnxdepth.scores import ScoreTable  # noqa: E402
from onnxdepth.verify import verify_model  # noqa: E402
from test_importance import LAYERS, N_SEQ, SEQ_LEN, tiny  # noqa: E402,F401

SHAPES = {"input_ids": (1, 8), "attention_mask": (1, 8), "position_ids": (1, 8)}


def _config(tiny, ratio: float, importance: str = "angular", **options) -> PruneConfig:  # noqa: F811
    calibration = Calibration(str(tiny.npz), N_SEQ, SEQ_LEN, model_path=tiny.path)
    return PruneConfig(ratio, **{"granularity": "fine", "importance": importance, **options}, calibration=calibration)


def _tokens(tiny):  # noqa: F811
    return calibration_tokens(str(tiny.npz), tiny.path, n_seq=N_SEQ, seq_len=SEQ_LEN)


def _by_node(moves):
    return {m: (layer, tuple(name for name, _ in members)) for m, (layer, members) in moves.items()}


def test_layer_moves_group_what_is_left(tiny):  # noqa: F811
    session = PruneSession(tiny.model, granularity="fine")
    moves = layer_moves(session, grouped=True)
    for l in range(LAYERS):
        assert [u for _, u in moves[f"layer{l}.block"][1]] == [f"layer{l}.attention", f"layer{l}.mlp_gate",
                                                               f"layer{l}.mlp_up", f"layer{l}.mlp_down"]
        assert [u for _, u in moves[f"layer{l}.mlp"][1]] == [f"layer{l}.mlp_gate", f"layer{l}.mlp_up",
                                                             f"layer{l}.mlp_down"]
    assert len(moves) == LAYERS * 6
    assert len(layer_moves(session, grouped=False)) == LAYERS * 4
    session.apply(session.plan("layer0.attention"))
    session.apply(session.plan("layer1.mlp_gate"))
    moves = layer_moves(session, grouped=True)
    assert "layer0.block" not in moves and "layer0.attention" not in moves and "layer0.mlp" in moves
    assert [u for _, u in moves["layer1.mlp"][1]] == ["layer1.mlp_up", "layer1.mlp_down"]


def test_whole_layer_move_is_the_identity(tiny):  # noqa: F811
    """Angular: a pruned layer passes its input on, so its score is distance(input, output) of the layer;
    cross-entropy: it equals the block-granularity cross-entropy score of the layer."""
    tokens = _tokens(tiny)
    session = PruneSession(tiny.model, granularity="fine")
    boundaries = layer_boundaries(session)
    moves = _by_node({m: v for m, v in layer_moves(session, grouped=True).items() if m.endswith(".block")})
    angular = score_moves(tiny.model, boundaries, moves, tokens)
    cache = cache_layers(tiny.model, boundaries, tokens)
    assert len(boundaries) == LAYERS
    for l, (start, end) in enumerate(boundaries):
        expected = _mean_distance(cache.hidden[start], cache.hidden[end])
        assert angular[f"layer{l}.block"].score == pytest.approx(expected, abs=2e-6)
        assert expected > 1e-3  # the check has teeth: the layers do change their input
    measure = chained_measure(reference_distribution(tiny.model, boundaries, tokens))
    ce = score_moves(tiny.model, boundaries, moves, tokens, measure=measure)
    calibration = Calibration(str(tiny.npz), N_SEQ, SEQ_LEN, model_path=tiny.path)
    block = score_units(tiny.model, PruneSession(tiny.model, granularity="block"), "cross_entropy", calibration).units
    for l in range(LAYERS):
        assert ce[f"layer{l}.block"].score == pytest.approx(block[f"layer{l}.block"], rel=1e-4)
        # The unpruned model's CE to itself is its entropy: every move adds damage to it.
        assert ce[f"layer{l}.block"].score > ce[f"layer{l}.block"].baseline


def test_move_parameters_are_what_the_whole_model_loses(tiny):  # noqa: F811
    tokens = _tokens(tiny)
    session = PruneSession(tiny.model, granularity="fine")
    moves = layer_moves(session, grouped=True)
    scored = score_moves(tiny.model, layer_boundaries(session), _by_node(moves), tokens)
    assert set(scored) == set(moves)
    for move_id in ("layer1.attention", "layer1.mlp_gate", "layer1.mlp", "layer2.block"):
        full = PruneSession(tiny.model, granularity="fine")
        for _, unit_id in moves[move_id][1]:
            full.apply(full.plan(unit_id))
        assert scored[move_id].params_removed == full.params_before - full.params(), move_id


@pytest.mark.parametrize("importance", ["angular", "cross_entropy"])
def test_grouped_one_shot_reaches_the_ratio_and_replays(tiny, importance):  # noqa: F811
    result = prune_model(tiny.model, _config(tiny, 0.3, importance, ranking="grouped"))
    assert result.reduction >= 0.3
    assert result.plan["ranking"] == "grouped"
    verify_model(result.model, tiny.model, SHAPES)
    replayed = replay_plan(tiny.model, result.plan)
    assert replayed.pruned_units == result.pruned_units
    assert replayed.params_after == result.params_after


def test_grouped_greedy_first_move_is_the_one_shot_first_move(tiny):  # noqa: F811
    one_shot = prune_model(tiny.model, _config(tiny, 0.3, "cross_entropy", ranking="grouped"))
    greedy = prune_model(tiny.model, _config(tiny, 0.3, "cross_entropy", ranking="grouped", rescore_every=1))
    lazy = prune_model(tiny.model, _config(tiny, 0.3, "cross_entropy", ranking="grouped", rescore_every=1,
                                           shortlist=3))
    for result in (greedy, lazy):
        assert result.reduction >= 0.3
        verify_model(result.model, tiny.model, SHAPES)
    assert greedy.pruned_units[0] == lazy.pruned_units[0] == one_shot.pruned_units[0]
    assert lazy.plan["shortlist"] == 3 and lazy.plan["rescore_every"] == 1


def test_grouped_and_shortlist_refuse_what_they_cannot_do(tiny):  # noqa: F811
    with pytest.raises(InvalidArgumentError, match="--ranking grouped needs --importance angular or cross_entropy"):
        prune_model(tiny.model, _config(tiny, 0.3, "magnitude", ranking="grouped"))
    with pytest.raises(InvalidArgumentError, match="--rescore-every 0: must be at least 1"):
        prune_model(tiny.model, _config(tiny, 0.3, rescore_every=0))
    with pytest.raises(InvalidArgumentError, match="--shortlist 0: must be at least 1"):
        prune_model(tiny.model, _config(tiny, 0.3, rescore_every=1, shortlist=0))
    with pytest.raises(InvalidArgumentError, match="--shortlist only applies with --rescore-every"):
        prune_model(tiny.model, _config(tiny, 0.3, shortlist=2))
    with pytest.raises(InvalidArgumentError, match="a --scores table cannot be reused"):
        prune_model(tiny.model, _config(tiny, 0.3, ranking="grouped"), scores=ScoreTable({"layer0.attention": 1.0}))
    with pytest.raises(InvalidArgumentError, match="--ranking grouped needs"):
        prune_model(tiny.model, _config(tiny, 0.3, ranking="grouped", granularity="block"))


def test_cli_grouped_and_errors(cli, tiny, tmp_path):  # noqa: F811
    out = tmp_path / "out.onnx"
    code, _, err = cli("prune", tiny.path, out, "--ratio", "0.3", "--importance", "angular", "--ranking", "grouped",
                       "--rescore-every", "2", "--shortlist", "4", "--calib", tiny.npz, "--calib-sequences", N_SEQ,
                       "--calib-length", SEQ_LEN, "--json")
    assert code == 0, err
    assert out.is_file()
    bad = tmp_path / "bad.onnx"
    code, _, err = cli("prune", tiny.path, bad, "--ratio", "0.3", "--shortlist", "4")
    assert code != 0 and err.count("\n") == 1 and "--shortlist" in err and not bad.exists()
    code, _, err = cli("prune", tiny.path, bad, "--ratio", "0.3", "--ranking", "grouped")
    assert code != 0 and err.count("\n") == 1 and "grouped" in err and not bad.exists()


def test_moves_scores_are_deterministic(tiny):  # noqa: F811
    tokens = _tokens(tiny)
    session = PruneSession(tiny.model, granularity="fine")
    moves = _by_node(layer_moves(session, grouped=True))
    a = score_moves(tiny.model, layer_boundaries(session), moves, tokens)
    b = score_moves(tiny.model, layer_boundaries(session), moves, tokens)
    assert np.array_equal([a[m].score for m in sorted(a)], [b[m].score for m in sorted(b)])


def test_end_game_takes_the_least_damaging_finishing_move(tiny):  # noqa: F811
    """At a ratio any single move reaches, the pick is the move with the least damage, not the best per
    parameter (which would overshoot with a whole layer when an attention block suffices)."""
    session = PruneSession(tiny.model, granularity="fine")
    moves = layer_moves(session, grouped=True)
    scored = score_moves(tiny.model, layer_boundaries(session), _by_node(moves), _tokens(tiny))
    least = min(scored, key=lambda m: (scored[m].score, m))
    smallest = min(s.params_removed for s in scored.values())
    ratio = 0.5 * smallest / session.params_before
    result = prune_model(tiny.model, _config(tiny, ratio, ranking="grouped"))
    assert result.pruned_units == [u for _, u in moves[least][1]]


def test_shortlist_scores_fewer_moves(tiny, monkeypatch):  # noqa: F811
    """--shortlist K with cross-entropy: all moves by angular distance once, then 2K by cross-entropy, then at
    most K per round."""
    from onnxdepth.importance import angular

    calls = []
    real = angular.score_moves

    def recording(model, boundaries, moves, tokens, **kwargs):
        calls.append((len(moves), kwargs.get("measure") is None))
        return real(model, boundaries, moves, tokens, **kwargs)

    monkeypatch.setattr(angular, "score_moves", recording)
    result = prune_model(tiny.model, _config(tiny, 0.5, "cross_entropy", ranking="grouped", rescore_every=1,
                                             shortlist=3))
    assert result.reduction >= 0.5
    assert calls[0] == (LAYERS * 6, True) and calls[1] == (6, False)
    assert len(calls) > 2 and all(n <= 3 and not is_angular for n, is_angular in calls[2:])
