"""The importance stage's unit metrics: a `ScoreTable` of data-driven scores for one session.

Angular importance is block-local on transformers (Eq. 3.11; whole layers and Gromov's runs come from the
layer-boundary cache alone, or after their least-squares fits), measured on the graph outputs on CNNs
(`importance.output_damage`), and scored on Ray with a pool (`importance.layer_jobs`); cross-entropy compares
next-token distributions (Sec. 4.3).
"""

from __future__ import annotations

import onnx

from .config import Calibration
from .errors import InvalidArgumentError
from .prune.session import PruneSession
from .scores import ScoreTable

__all__ = ["score_units"]


def score_units(model: onnx.ModelProto, session: PruneSession, importance: str, calibration: Calibration, *,
                writers: list | None = None, refit: bool = False, pool=None) -> ScoreTable:
    """Unit scores of a data-driven metric on calibration data (angular: block-local, Eq. 3.11;
    cross_entropy: next-token distribution change, Sec. 4.3). Block granularity with angular importance
    also measures every contiguous run of layers (Gromov et al.'s selection); given the stream WRITERS
    (least-squares compensation), a run's distance is the one left after its fit, on held-out windows."""
    if not session.layers:
        from .compensate.images import is_image_model

        if importance == "angular" and is_image_model(session):
            from .importance.output_damage import output_damage_scores

            return ScoreTable(output_damage_scores(model, session, calibration, refit=refit))
        raise InvalidArgumentError(f"--importance {importance}: needs a transformer, or for angular a model with one "
                                   "[1, 3, H, W] image input (no attention block found)")
    tokens = calibration.tokens(f"--importance {importance}")
    if importance == "cross_entropy":
        from .importance.cross_entropy import cross_entropy_scores
        from .importance.chain_stages import pipelined_cross_entropy_scores

        if pool is not None:
            return ScoreTable(pipelined_cross_entropy_scores(model, session, tokens, pool))
        return ScoreTable(cross_entropy_scores(model, session, tokens))
    from .importance.angular import angular_scores, run_distances

    if session.granularity == "block":
        # Block scores and Gromov's contiguous runs both come from the layer-boundary cache alone.
        from .compensate import is_postnorm

        if writers and not is_postnorm(writers):
            from .compensate.runs import fitted_run_table

            held_out = calibration.held_out_tokens()
            if pool is not None:
                from .importance.layer_jobs import pooled_fitted_run_table

                table = pooled_fitted_run_table(model, writers, tokens, held_out, pool)
            else:
                table = fitted_run_table(model, writers, tokens, held_out)
        else:
            table = run_distances(model, session, tokens)
        return ScoreTable.from_layer_runs(table)
    if pool is not None:
        from .importance.layer_jobs import pooled_angular_scores

        return ScoreTable(pooled_angular_scores(model, session, tokens, pool))
    return ScoreTable(angular_scores(model, session, tokens))
