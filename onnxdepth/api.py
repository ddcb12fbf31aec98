"""Library entry points: list units, prune to a ratio, write the verified result with its plan."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from .errors import InvalidArgumentError, OutputWriteError
from .graph.io import check_output_path, load_model, save_model_atomic
from .importance import get_metric
from .importance.taylor_calibration import attach_lm_taylor, taylor_refresh
from .prune.session import PruneSession, Unit, UnitPlan
from .importance import UNIT_METRICS
from .rescore import RESCORE_RANKINGS, prune_grouped_one_shot, prune_with_rescoring
from .select import ORDERINGS, RANKINGS, gromov_order, prune_one_shot, prune_to_ratio, prune_transformer
from .verify import verify_model

__all__ = ["PruneResult", "list_units", "units_summary", "prune_model", "prune_file", "prune_file_cached",
           "cached_plan", "PLAN_METADATA_KEY"]

logger = logging.getLogger(__name__)

PLAN_METADATA_KEY = "onnxdepth.plan"


@dataclass
class PruneResult:
    model: onnx.ModelProto
    params_before: int
    params_after: int
    pruned_units: list[str]
    steps: list[dict] = field(default_factory=list)

    @property
    def reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def summary(self) -> dict:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "reduction": round(self.reduction, 6), "pruned_units": self.pruned_units}


def list_units(model: onnx.ModelProto, *, exclude: str | None = None,
               input_shapes: dict | None = None, granularity: str = "fine", search_space: str = "full") -> list[Unit]:
    return PruneSession(model, exclude=exclude, input_shapes=input_shapes, granularity=granularity,
                        search_space=search_space).units()


def units_summary(units: list[Unit]) -> dict:
    """Table 4.4's rows: candidates (after head and user exclusions), other exclusions, prunable, reduced."""
    candidates = [u for u in units if u.excluded_reason not in ("graph head", "user exclude")]
    excluded: dict[str, int] = {}
    for unit in candidates:
        if unit.excluded_reason is not None:
            key = unit.excluded_reason.split(":")[0]
            excluded[key] = excluded.get(key, 0) + 1
    prunable = [u for u in candidates if u.prunable]
    return {"candidates": len(candidates), "excluded": excluded, "prunable": len(prunable),
            "prunable_reduced": sum(1 for u in prunable if not u.changes_channels),
            "head": sum(1 for u in units if u.excluded_reason == "graph head"),
            "user_excluded": sum(1 for u in units if u.excluded_reason == "user exclude")}


def prune_model(model: onnx.ModelProto, ratio: float, *, importance: str = "magnitude", exclude: str | None = None,
                input_shapes: dict | None = None, verify: bool = True, granularity: str = "fine",
                ordering: str = "ascending", seed: int = 0, scores: dict[str, float] | None = None,
                calib: str | None = None, model_path: str | os.PathLike | None = None, calib_sequences: int = 32,
                calib_length: int = 128, block_choice: str = "gromov", ranking: str = "split",
                rescore_every: int | None = None, shortlist: int | None = None,
                on_step: Callable[[UnitPlan, float], None] | None = None, checkpoints: Sequence[float] = (),
                on_checkpoint: Callable[[float, PruneResult], None] | None = None,
                search_space: str = "full") -> PruneResult:
    """Prune MODEL until RATIO of its parameters are gone and verify the result.

    CNNs and other non-transformer graphs: Algorithm 9 (iterative). Transformers: Algorithm 8 at
    --granularity fine, one ranking for sublayer/block (scores computed once, as in the thesis).

    CHECKPOINTS (ratios below RATIO): the selection is a sequence of units, and pruning to a smaller
    ratio visits a prefix of it, so the model at each checkpoint is materialized, verified and handed to
    ON_CHECKPOINT(ratio, result) on the way, in one run (sweeps pay for the scoring once).
    """
    if not 0.0 <= ratio < 1.0:
        raise InvalidArgumentError(f"--ratio {ratio:g}: must be in [0, 1)")
    if ranking not in RESCORE_RANKINGS:
        raise InvalidArgumentError(f"--ranking {ranking}: expected one of {', '.join(RESCORE_RANKINGS)}")
    if rescore_every is not None and rescore_every < 1:
        raise InvalidArgumentError(f"--rescore-every {rescore_every}: must be at least 1")
    if shortlist is not None and shortlist < 1:
        raise InvalidArgumentError(f"--shortlist {shortlist}: must be at least 1")
    if shortlist is not None and not rescore_every:
        raise InvalidArgumentError("--shortlist only applies with --rescore-every")
    if ordering not in ORDERINGS:
        raise InvalidArgumentError(f"--ordering {ordering}: expected one of {', '.join(ORDERINGS)}")
    metric = get_metric(importance)
    session = PruneSession(model, exclude=exclude, input_shapes=input_shapes, importance=metric,
                           granularity=granularity, search_space=search_space)
    pending = sorted(r for r in checkpoints if 0.0 < r < ratio)
    if pending and session.layers and granularity == "block" and block_choice == "gromov" and importance == "angular":
        raise InvalidArgumentError("checkpoints: Gromov's contiguous choice depends on the ratio (a smaller ratio is "
                                   "not a prefix); prune each ratio on its own")
    if pending and on_checkpoint is not None:
        taken: list[UnitPlan] = []
        user_step = on_step

        def on_step(plan: UnitPlan, reduction: float) -> None:  # noqa: F811 (wraps the caller's hook)
            taken.append(plan)
            if user_step is not None:
                user_step(plan, reduction)
            while pending and reduction >= pending[0]:
                target = pending.pop(0)
                partial = PruneResult(session.to_model(model), session.params_before, session.params(),
                                      [s.unit_id for s in taken], [s.describe() for s in taken])
                record = _plan_record(session, partial, granularity=granularity, ordering=ordering, ranking=ranking,
                                      rescore_every=rescore_every, ratio=target, importance=importance,
                                      exclude=exclude, shortlist=shortlist)
                on_checkpoint(target, _finish(partial, record, model, session, verify))
    if importance == "taylor" and session.layers and scores is None and ratio > 0.0 and not rescore_every:
        attach_lm_taylor(model, session, calib=calib, model_path=model_path, n_seq=calib_sequences,
                         seq_len=calib_length, seed=seed)
    if ratio == 0.0:
        # Nothing to remove: the model is returned as it is, so outputs are bit-identical.
        out = onnx.ModelProto()
        out.CopyFrom(model)
        result = PruneResult(out, session.params_before, session.params_before, [])
    else:
        if rescore_every or ranking == "grouped":
            steps = _prune_searched(model, session, ratio, importance=importance, scores=scores,
                                    rescore_every=rescore_every, ranking=ranking, shortlist=shortlist,
                                    tokens=lambda what: _calibration_for(what, calib=calib, model_path=model_path,
                                                                         n_seq=calib_sequences, seq_len=calib_length,
                                                                         seed=seed),
                                    on_step=on_step)
        else:
            if scores is None and importance in UNIT_METRICS:
                scores = score_units(model, session, importance, calib=calib, model_path=model_path,
                                     n_seq=calib_sequences, seq_len=calib_length, seed=seed)
            steps = _prune_ranked(model, session, ratio, importance=importance, scores=scores, ordering=ordering,
                                  seed=seed, ranking=ranking, block_choice=block_choice, calib=calib,
                                  input_shapes=input_shapes, on_step=on_step)
        out = session.to_model(model)
        result = PruneResult(out, session.params_before, session.params(), [s.unit_id for s in steps],
                             [s.describe() for s in steps])
    plan = _plan_record(session, result, granularity=granularity, ordering=ordering, ranking=ranking,
                        rescore_every=rescore_every, ratio=ratio, importance=importance, exclude=exclude,
                        shortlist=shortlist)
    return _finish(result, plan, model, session, verify)


def _plan_record(session: PruneSession, result: PruneResult, *, granularity, ordering, ranking, rescore_every, ratio,
                 importance, exclude, shortlist=None) -> dict:
    """The plan JSON of RESULT: how it was selected, what it removed, every step (replayable)."""
    method = ("Algorithm 8" if granularity == "fine" else f"{granularity} ranking") if session.layers else \
        "Algorithm 9"
    return {"onnxdepth_version": "0.1.0", "method": f"depth pruning ({method})", "granularity": granularity,
            "search_space": session.search_space,
            "ordering": ordering, "ranking": ranking, "rescore_every": rescore_every, "shortlist": shortlist,
            "ratio": ratio,
            "importance": importance, "exclude": exclude, "layers": len(session.layers), **result.summary(),
            "removed_graph_io": list(session.removed_graph_io), "steps": result.steps}


def _finish(result: PruneResult, plan: dict, model: onnx.ModelProto, session: PruneSession,
            verify: bool) -> PruneResult:
    """Record PLAN in the pruned model's metadata and verify it against MODEL before anything is written."""
    entry = result.model.metadata_props.add()
    entry.key, entry.value = PLAN_METADATA_KEY, json.dumps(plan, separators=(",", ":"))
    if verify:
        verify_model(result.model, model, session.input_shapes, removed=set(session.removed_graph_io))
    result.plan = plan
    return result


def score_units(model: onnx.ModelProto, session: PruneSession, importance: str, *, calib: str | None = None,
                model_path: str | os.PathLike | None = None, n_seq: int = 32, seq_len: int = 128,
                seed: int = 0) -> dict[str, float]:
    """Unit scores of a data-driven metric on calibration data (angular: block-local, Eq. 3.11;
    cross_entropy: next-token distribution change, Sec. 4.3)."""
    if not session.layers:
        raise InvalidArgumentError(f"--importance {importance}: needs a transformer (no attention block found)")
    if model_path is None:
        raise InvalidArgumentError(f"--importance {importance}: needs the model's path (its tokenizer sits beside it)")
    from .calibration import calibration_tokens
    from .importance.angular import angular_scores, cache_layers, layer_boundaries

    tokens = calibration_tokens(calib, Path(model_path), n_seq=n_seq, seq_len=seq_len, seed=seed)
    if importance == "cross_entropy":
        from .importance.cross_entropy import cross_entropy_scores

        return cross_entropy_scores(model, session, tokens)
    if session.granularity == "block":
        # Block scores and Gromov's contiguous runs both come from the layer-boundary cache alone.
        boundaries = layer_boundaries(session)
        cache = cache_layers(model, boundaries, tokens)
        from .importance.angular import _mean_distance

        starts = [b[0] for b in boundaries] + [boundaries[-1][1]]
        table = [[0.0] + [_mean_distance(cache.hidden[starts[l]], cache.hidden[starts[l + n]])
                          for n in range(1, len(boundaries) - l + 1)] for l in range(len(boundaries))]
        scores = {f"layer{l}.block": table[l][1] for l in range(len(boundaries))}
        scores["__gromov__"] = table  # type: ignore[assignment]
        return scores
    return angular_scores(model, session, tokens)


def _prune_ranked(model, session: PruneSession, ratio: float, *, importance, scores, ordering, seed, ranking,
                  block_choice, calib, input_shapes, on_step) -> list:
    """Selection from scores fixed up front (Algorithms 8 and 9, Gromov's choice for blocks)."""
    if session.layers and session.granularity == "block" and importance == "angular" and block_choice == "gromov" \
            and ordering == "ascending":
        return prune_one_shot(session, ratio, _gromov_run(session, ratio, scores), on_step=on_step)
    if session.layers:
        if ranking not in RANKINGS:
            raise InvalidArgumentError(f"--ranking {ranking}: expected one of {', '.join(RANKINGS)} here")
        return prune_transformer(session, ratio, ordering=ordering, seed=seed, scores=scores, ranking=ranking,
                                 on_step=on_step)
    refresh = taylor_refresh(model, session, input_shapes, calib, seed=seed) if importance == "taylor" else None
    return prune_to_ratio(session, ratio, ordering=ordering, seed=seed, on_step=on_step, refresh=refresh)


def _prune_searched(model, session: PruneSession, ratio: float, *, importance, scores, rescore_every, ranking,
                    shortlist, tokens: Callable[[str], np.ndarray], on_step) -> list:
    """Selection that scores moves on the model as it is pruned (--rescore-every) or groups of units
    (--ranking grouped): see `onnxdepth.rescore`."""
    what = "--rescore-every" if rescore_every else "--ranking grouped"
    if importance not in ("angular", "cross_entropy") or session.granularity != "fine" or not session.layers:
        raise InvalidArgumentError(f"{what} needs --importance angular or cross_entropy and --granularity fine "
                                   "on a transformer")
    if scores is not None:
        raise InvalidArgumentError(f"{what} scores moves on the model as it is pruned: a --scores table cannot "
                                   "be reused")
    if rescore_every:
        return prune_with_rescoring(model, session, ratio, rescore_every, tokens(what), importance=importance,
                                    ranking=ranking, shortlist=shortlist, on_step=on_step)
    return prune_grouped_one_shot(model, session, ratio, tokens(what), importance=importance, on_step=on_step)


def _calibration_for(what: str, *, calib, model_path, n_seq, seq_len, seed) -> np.ndarray:
    from .calibration import calibration_tokens

    if model_path is None:
        raise InvalidArgumentError(f"{what} needs the model's path (its tokenizer sits beside it)")
    return calibration_tokens(calib, Path(model_path), n_seq=n_seq, seq_len=seq_len, seed=seed)


def gromov_rows(table: list[list[float]]) -> dict[str, float]:
    """The run distances as score-table rows: `layers{l}-{l+n-1}` -> distance(input of l, output of l+n-1)."""
    return {f"layers{l}-{l + n - 1}": row[n] for l, row in enumerate(table) for n in range(1, len(row))}


def gromov_table_from_rows(scores: dict, n_layers: int) -> list[list[float]] | None:
    """Inverse of gromov_rows; None if the rows are not all there."""
    table = []
    for l in range(n_layers):
        row = [0.0]
        for n in range(1, n_layers - l + 1):
            key = f"layers{l}-{l + n - 1}"
            if key not in scores:
                return None
            row.append(float(scores[key]))
        table.append(row)
    return table


def _gromov_run(session: PruneSession, ratio: float, scores: dict) -> list[str]:
    """Gromov et al.: the fewest contiguous layers that reach RATIO, placed where they change least."""
    table = scores.get("__gromov__") or gromov_table_from_rows(scores, len(session.layers))
    if table is None:
        raise InvalidArgumentError("--block-choice gromov needs the distances of runs of layers: use a score "
                                   "table written by `onnxdepth score --granularity block`, or --block-choice ranking")
    per_layer = [session.plan(f"layer{l}.block").params_removed for l in range(len(session.layers))]
    n = 1
    while n < len(per_layer) and sum(sorted(per_layer)[:n]) < ratio * session.params_before:
        n += 1
    return gromov_order(table, n)


def replay_plan(model: onnx.ModelProto, plan: dict, *, input_shapes: dict | None = None,
                verify: bool = True) -> PruneResult:
    """Apply a saved plan's units in its order: the same pruned model, with no scoring (for pipelines).

    Channel choices are recomputed deterministically from the weights (magnitude, Eq. 3.10), as when
    the plan was made.
    """
    try:
        granularity = plan.get("granularity", "fine")
        unit_ids = [step["unit"] for step in plan["steps"]]
    except (KeyError, TypeError):
        raise InvalidArgumentError("--plan: not an onnxdepth plan (needs granularity and steps[].unit)") from None
    session = PruneSession(model, input_shapes=input_shapes, granularity=granularity)
    for unit_id in unit_ids:
        step = session.plan(unit_id)
        if step.reason is not None:
            raise InvalidArgumentError(f"--plan: unit {unit_id} cannot be pruned in this model: {step.reason}")
        session.apply(step)
    out = session.to_model(model)
    result = PruneResult(out, session.params_before, session.params(), unit_ids,
                         [s for s in plan["steps"]])
    return _finish(result, {**plan, **result.summary(), "replayed": True}, model, session, verify)


def plan_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".plan.json")


def prune_file(src: str | os.PathLike, out: str | os.PathLike, ratio: float, **kwargs) -> PruneResult:
    """Load SRC, prune, verify, and write OUT and OUT's plan JSON atomically."""
    out = check_output_path(out, src)
    if "plan" not in kwargs and not 0.0 <= ratio < 1.0:
        raise InvalidArgumentError(f"--ratio {ratio:g}: must be in [0, 1)")
    model = load_model(src)
    plan = kwargs.pop("plan", None)
    if plan is not None:
        result = replay_plan(model, plan, input_shapes=kwargs.get("input_shapes"))
    else:
        kwargs.setdefault("model_path", src)
        result = prune_model(model, ratio, **kwargs)
    result.plan["source"] = str(src)
    save_model_atomic(result.model, out)
    _write_json_atomic(plan_path_for(out), result.plan)
    return result


def prune_file_cached(src: str | os.PathLike, out: str | os.PathLike, ratio: float, **kwargs
                      ) -> tuple[Path, dict, bool]:
    """Like prune_file, but reuse OUT when its plan JSON records the same source, ratio, granularity and
    importance (benchmarks and tools that revisit the same points). Returns (OUT, plan, reused)."""
    src, out = Path(src), Path(out)
    plan = cached_plan(src, out, ratio, granularity=kwargs.get("granularity", "fine"),
                       importance=kwargs.get("importance", "magnitude"),
                       search_space=kwargs.get("search_space", "full"))
    if plan is not None:
        return out, plan, True
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, prune_file(src, out, ratio, **kwargs).plan, False


def cached_plan(src: str | os.PathLike, out: str | os.PathLike, ratio: float, *, granularity: str = "fine",
                importance: str = "magnitude", search_space: str = "full") -> dict | None:
    """The plan of OUT when prune_file_cached would reuse it (same source, ratio, granularity, importance,
    search space)."""
    src, out = Path(src), Path(out)
    try:
        plan = json.loads(plan_path_for(out).read_text()) if out.is_file() else None
    except (OSError, ValueError):
        return None
    if isinstance(plan, dict) and plan.get("search_space", "full") != search_space:
        return None
    wanted = {"ratio": ratio, "granularity": granularity, "importance": importance}
    if isinstance(plan, dict) and all(plan.get(k) == v for k, v in wanted.items()) and plan.get("source") \
            and Path(plan["source"]).resolve() == src.resolve():
        return plan
    return None


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputWriteError(f"{path}: cannot write ({exc.strerror or exc})") from None
