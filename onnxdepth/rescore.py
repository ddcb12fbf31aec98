"""Transformer selection with scores measured on the model as pruned so far, and grouped moves.

Two things past the thesis's one-shot Algorithm 8 (its limitations 1 and 2, Sec. 5.2.2):

- **Re-scoring** (``--rescore-every N``): after every N moves, every remaining move is scored again on the
  partly pruned model, block-locally (angular) or against the *unpruned* model's next-token
  distribution (cross-entropy: a greedy search for the closest smaller model). ``--shortlist K`` makes it
  lazy: only the K best moves of the previous round are scored again; with cross-entropy, the first round
  scores the 2K best by block-local angular distance per parameter (one layer run each) rather than all.
- **Grouped moves** (``--ranking grouped``): besides single units, a move may prune several units of one
  layer together: its whole MLP (every projection, so the MLP branch adds nothing) or the whole layer
  (attention + MLP). Pruning a single projection forces width changes on its neighbours, pruning all of
  them does not, so the damage of a group is not the sum of its members'; each move is scored on its own.
  Moves compete on one ranking by the damage they add per parameter they remove. A whole-layer move is
  the coarse block method's unit, so this search space contains Gromov et al.'s choices too.

A move is a tuple of member units of one layer, applied in order (in the plan they are ordinary unit
steps, so a plan replays unit by unit).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx

from .config import RANKINGS
from .errors import InvalidArgumentError, RatioUnreachableError
from .prune.session import PruneSession
from .select import apply_unit

__all__ = ["layer_moves", "prune_with_rescoring", "prune_grouped_one_shot"]

logger = logging.getLogger(__name__)

#: A move: (layer index, ((node name of an MLP transform or None for attention, unit id), ...)).
Move = tuple[int, tuple[tuple[str | None, str], ...]]


def layer_moves(session: PruneSession, grouped: bool) -> dict[str, Move]:
    """The moves left in SESSION: every unpruned fine unit, and with GROUPED each layer's remaining MLP
    projections together (``layerL.mlp``, when two or more are left) and the whole remaining layer
    (``layerL.block``, when its attention and some MLP projection are left)."""
    moves: dict[str, Move] = {}
    for layer in session.layers:
        prefix = f"layer{layer.index}"
        attention = [] if f"{prefix}.attention" in session.pruned else [(None, f"{prefix}.attention")]
        mlp = [(node.name, f"{prefix}.{kind}") for kind, node in layer.mlp.items()
               if f"{prefix}.{kind}" not in session.pruned]
        for member in attention + mlp:
            moves[member[1]] = (layer.index, (member,))
        if grouped and len(mlp) > 1:
            moves[f"{prefix}.mlp"] = (layer.index, tuple(mlp))
        if grouped and attention and mlp:
            moves[f"{prefix}.block"] = (layer.index, tuple(attention + mlp))
    return moves


class _Scorer:
    """Scores moves on the current model: the measure with the move applied, minus the current model's
    own (0 for angular, its cross-entropy to the unpruned model for cross-entropy)."""

    def __init__(self, model: onnx.ModelProto, session: PruneSession, tokens: np.ndarray, importance: str):
        from .importance.angular import layer_boundaries

        self.model, self.session, self.tokens = model, session, tokens
        self.boundaries = layer_boundaries(session)
        self.keep = {name for pair in self.boundaries for name in pair}
        self.measure = None
        if importance == "cross_entropy":
            from .importance.cross_entropy import chained_measure, reference_distribution

            self.measure = chained_measure(reference_distribution(model, self.boundaries, tokens))
        elif importance != "angular":
            raise InvalidArgumentError(f"re-scoring needs --importance angular or cross_entropy, not {importance}")

    def __call__(self, moves: dict[str, Move], angular: bool = False) -> dict:
        """Score MOVES with the importance (ANGULAR: block-local angular distance whatever the importance)."""
        from .importance.angular import score_moves

        current = self.session.to_model(self.model, keep=self.keep)
        by_node = {move_id: (layer, tuple(name for name, _ in members)) for move_id, (layer, members) in moves.items()}
        return score_moves(current, self.boundaries, by_node, self.tokens, measure=None if angular else self.measure,
                           progress=len(moves) > 8)


def _per_parameter(scored: dict) -> list[str]:
    """Move ids by added damage per parameter removed, lowest first (ties by id, for determinism)."""
    return sorted(scored, key=lambda m: ((scored[m].score - scored[m].baseline) / max(scored[m].params_removed, 1), m))


def _interleaved(scored: dict, position: int) -> list[str]:
    """Algorithm 8's order over single-unit moves, starting at interleave position POSITION (k mod 3 == 1
    takes attention), so that the 2:1 rhythm carries across rounds."""
    ranked = sorted(scored, key=lambda m: (scored[m].score, m))
    attention = [m for m in ranked if m.endswith(".attention")]
    others = [m for m in ranked if not m.endswith(".attention")]
    order, k = [], position
    while attention or others:
        take_attention = (k % 3 == 1 and attention) or not others
        order.append((attention if take_attention else others).pop(0))
        k += 1
    return order


def _finishing_move(session: PruneSession, moves: dict[str, Move], scored: dict, ratio: float,
                    done: set[str]) -> str | None:
    """The end game of a per-parameter ranking: once some single move reaches RATIO, the one that adds the
    least damage (rather than the best per parameter, which may be a larger move than needed)."""
    needed = ratio * session.params_before - (session.params_before - session.params())
    finishing = [m for m in scored if m not in done and scored[m].params_removed >= needed
                 and not any(unit in session.pruned for _, unit in moves[m][1])]  # stale once overlapped
    if not finishing:
        return None
    return min(finishing, key=lambda m: (scored[m].score - scored[m].baseline, m))


def _apply_move(session: PruneSession, members, steps: list, on_step: Callable | None) -> tuple[int, float]:
    """Prune the members of a move that are still there, in order; (units pruned, reduction)."""
    applied = sum(apply_unit(session, unit_id, steps, on_step) for _, unit_id in members
                  if unit_id not in session.pruned)
    return applied, 1.0 - session.params() / session.params_before


def prune_with_rescoring(model: onnx.ModelProto, session: PruneSession, ratio: float, every: int,
                         tokens: np.ndarray, *, importance: str, ranking: str = "split", shortlist: int | None = None,
                         on_step: Callable | None = None) -> list:
    """Prune SESSION (fine granularity, on MODEL) to RATIO, scoring the moves again after every EVERY moves.

    RANKING split: Algorithm 8's separate rankings over single units (2:1); global: single units by damage
    per parameter; grouped: single units, whole MLPs and whole layers by damage per parameter.
    SHORTLIST K: after the first round, only the K best moves of the previous ranking are scored again; with
    cross-entropy the first round scores only the 2K best by block-local angular distance per parameter.
    """
    if ranking not in RANKINGS:
        raise InvalidArgumentError(f"--ranking {ranking}: expected one of {', '.join(RANKINGS)}")
    if every < 1:
        raise InvalidArgumentError(f"--rescore-every {every}: must be at least 1")
    if shortlist is not None and shortlist < 1:
        raise InvalidArgumentError(f"--shortlist {shortlist}: must be at least 1")
    scorer = _Scorer(model, session, tokens, importance)
    steps: list = []
    reduction = 0.0
    previous: list[str] | None = None
    moves_made = 0
    while reduction < ratio:
        moves = layer_moves(session, grouped=ranking == "grouped")
        if shortlist and previous is not None:
            listed = [m for m in previous if m in moves][:shortlist]
            moves = {m: moves[m] for m in listed} if listed else moves
        elif shortlist and importance == "cross_entropy" and len(moves) > 2 * shortlist:
            # First round: the 2K most promising moves by block-local angular distance per parameter (one
            # layer run each, cheap) are the ones cross-entropy, a run through the rest of the model, scores.
            moves = {m: moves[m] for m in _per_parameter(scorer(moves, angular=True))[:2 * shortlist]}
        scored = scorer(moves)
        if not scored:
            break
        order = _interleaved(scored, moves_made % 3) if ranking == "split" else _per_parameter(scored)
        applied, done = 0, set()
        for move_id in order:
            if applied == every or reduction >= ratio:
                break
            if ranking != "split":
                move_id = _finishing_move(session, moves, scored, ratio, done) or move_id
            units, reduction = _apply_move(session, moves[move_id][1], steps, on_step)
            if units:
                done.add(move_id)
                applied += 1
                moves_made += 1
                logger.info("pruned move %s (%d units), reduction %.4f", move_id, units, reduction)
        if applied == 0:
            break
        previous = [m for m in order if m not in done]
    if reduction < ratio:
        raise RatioUnreachableError(f"ratio {ratio:g} is not reachable: the largest reachable reduction is "
                                    f"{reduction:.4f}", reachable=reduction)
    return steps


def prune_grouped_one_shot(model: onnx.ModelProto, session: PruneSession, ratio: float, tokens: np.ndarray, *,
                           importance: str, on_step: Callable | None = None) -> list:
    """--ranking grouped without re-scoring: every move scored once on the unpruned model, then applied
    by damage per parameter until RATIO (a move that overlaps one already applied prunes what is left)."""
    scorer = _Scorer(model, session, tokens, importance)
    moves = layer_moves(session, grouped=True)
    scored = scorer(moves)
    steps: list = []
    reduction = 0.0
    done: set[str] = set()
    for move_id in _per_parameter(scored):
        if reduction >= ratio:
            break
        move_id = _finishing_move(session, moves, scored, ratio, done) or move_id
        done.add(move_id)
        _, reduction = _apply_move(session, moves[move_id][1], steps, on_step)
    if reduction < ratio:
        raise RatioUnreachableError(f"ratio {ratio:g} is not reachable: the largest reachable reduction is "
                                    f"{reduction:.4f}", reachable=reduction)
    return steps
