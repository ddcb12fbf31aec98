"""Library entry points: list units, score them, prune to a ratio, write the verified result with its plan.

The pipeline of `prune_model(model, config)`, one named stage per call:

    units (PruneSession) -> importance (importance_stage) -> selection (a Strategy; applies and patches
    each unit it takes) -> export (session.to_model) -> plan record -> verify -> save (prune_file)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx

from . import __version__
from .config import AUTO, Calibration, PruneConfig
from .distributed import check_distributable, pool_for
from .scoring import score_units

#: The options `auto` can stand for (resolved per model by `onnxdepth.defaults`).
AUTO_OPTIONS = ("importance", "granularity", "compensate")
#: Options a cached plan must match besides those (with their values in plans made before they existed).
LATENCY_DEFAULTS = {"objective": "params", "latency_ratio": None, "head": "branches", "device": "cpu",
                    "profile_threads": 1}
LATENCY_OPTIONS = tuple(LATENCY_DEFAULTS)
from .errors import InvalidArgumentError, ModelLoadError
from . import genai
from .fileio import write_json_atomic
from .graph.external import folder_of
from .graph.io import check_output_path, load_model, save_model_atomic
from .importance import UNIT_METRICS, get_metric
from .prune.session import PruneSession, Unit, UnitPlan
from .scores import ScoreTable
from .strategies import Selection, Strategy, strategy_for
from .verify import verify_model, written_file_check

__all__ = ["PLAN_METADATA_KEY", "PruneResult", "cached_plan", "record_plan", "stored_plan", "importance_stage", "list_units", "plan_path_for",
           "prune_file", "prune_file_cached", "prune_model", "replay_file", "replay_plan", "score_model",
           "score_units", "units_summary"]

logger = logging.getLogger(__name__)

PLAN_METADATA_KEY = "onnxdepth.plan"


@dataclass
class PruneResult:
    """A pruned model, what it cost, and its plan (the JSON that `--plan` replays)."""

    model: onnx.ModelProto
    params_before: int
    params_after: int
    pruned_units: list[str]
    steps: list[dict] = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    latency_reduction: float | None = None  # on the latency profile's accounting, when one was taken

    @property
    def reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def summary(self) -> dict:
        latency = {} if self.latency_reduction is None else {"latency_reduction": round(self.latency_reduction, 6)}
        return {"params_before": self.params_before, "params_after": self.params_after,
                "reduction": round(self.reduction, 6), **latency, "pruned_units": self.pruned_units}


# -- stage 1: units ----------------------------------------------------------------------------------------
def new_session(model: onnx.ModelProto, config: PruneConfig, *, checkpoints: bool = False,
                scores: ScoreTable | None = None) -> tuple[PruneSession, PruneConfig]:
    """The editable copy of MODEL with its units, as CONFIG's granularity, search space and exclusions see it,
    and CONFIG with its `auto` options resolved for MODEL (`onnxdepth.defaults`; CHECKPOINTS: smaller ratios
    are materialised on the way)."""
    from .defaults import resolve_defaults

    session = PruneSession(model, exclude=config.exclude, input_shapes=config.input_shapes,
                           importance=get_metric("magnitude" if config.importance == AUTO else config.importance),
                           granularity="fine" if config.granularity == AUTO else config.granularity,
                           search_space=config.search_space, head=config.head)
    resolved = resolve_defaults(config, session, checkpoints=checkpoints, scores=scores)
    if resolved is not config:
        session.set_options(importance=get_metric(resolved.importance), granularity=resolved.granularity)
    return session, resolved


def list_units(model: onnx.ModelProto, *, exclude: str | None = None, input_shapes: dict | None = None,
               granularity: str = "fine", search_space: str = "full", head: str = "branches") -> list[Unit]:
    return PruneSession(model, exclude=exclude, input_shapes=input_shapes, granularity=granularity,
                        search_space=search_space, head=head).units()


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


# -- stage 2: importance -------------------------------------------------------------------------------------
def importance_stage(model: onnx.ModelProto, session: PruneSession, config: PruneConfig, strategy: Strategy,
                     scores: ScoreTable | None, writers: list) -> ScoreTable | None:
    """Scores for STRATEGY: a given table, a data-driven metric's table, or None when the plans' own
    per-parameter scores are used (magnitude; Taylor attached to SESSION; Taylor on CNNs is re-scored by the
    iterative strategy after each step)."""
    check_distributable(config, session)
    if scores is not None or strategy.scores_itself:
        return scores
    if config.importance in UNIT_METRICS:
        with pool_for(config, session) as pool:
            return score_units(model, session, config.importance, config.calibration, writers=writers,
                               refit=chain_refits(session, config.compensate), pool=pool)
    if config.importance == "taylor" and session.layers:
        from .importance.taylor_calibration import attach_lm_taylor

        attach_lm_taylor(model, session, config.calibration)
    return None


# -- stage: compensation --------------------------------------------------------------------------------------
def stream_writers_for(session: PruneSession, compensate: str) -> list:
    """What `--compensate` refits (taken before anything is pruned): the residual writers of a pre-norm stream,
    else the fit sites of a post-norm encoder (`compensate.postnorm_sites`); [] for none, for a CNN or image
    model (its refits are chain refits of surviving Convs, `chain_refits`), or for auto on a model with
    neither."""
    if compensate == "none":
        return []
    if chain_refits(session, compensate):
        from .compensate.images import check_image_model

        check_image_model(session)  # refused before selection, not after it
        return []
    from .compensate import postnorm_sites, stream_writers

    writers = stream_writers(session) or postnorm_sites(session)
    if not writers and compensate == "lstsq":
        raise InvalidArgumentError("--compensate lstsq: not yet supported for this model (it needs a transformer "
                                   "with a pre-norm residual stream, a post-norm encoder or a CNN)")
    return writers


def chain_refits(session: PruneSession, compensate: str) -> bool:
    """True when `--compensate` refits SESSION's surviving Convs after pruning (`compensate.chain`): lstsq on a
    model without attention layers (a CNN) or with one image input (PP-OCR rec: its attention neck is not
    refitted). auto leaves them as they are."""
    from .compensate.images import is_image_model

    return compensate == "lstsq" and (not session.layers or is_image_model(session))


def compensation_stage(model: onnx.ModelProto, session: PruneSession, calibration: Calibration,
                       writers: list, compensate: str = "none") -> dict:
    """Refit what pruning left (`onnxdepth.compensate`); the plan's record of it. A CNN's chain refits run
    once, after the whole selection."""
    if chain_refits(session, compensate):
        from .compensate import chain
        from .compensate.images import image_inputs

        started = time.perf_counter()
        images, held_out = image_inputs(model, session, calibration)
        fits = chain.fit_consumer_chains(model, session, images, held_out)
        return {"method": "lstsq", "refits": f"conv chains ({chain.SCOPE}, once after selection)",
                "seconds": round(time.perf_counter() - started, 1), "fits": fits}
    if not writers:
        return {"method": "none", "fits": []}
    from .compensate import fit_postnorm, fit_removed_runs, is_postnorm

    tokens = calibration.tokens("--compensate lstsq")
    held_out = calibration.held_out_tokens("--compensate lstsq")
    if is_postnorm(writers):
        return {"method": "lstsq", "layout": "post-norm",
                "fits": fit_postnorm(model, session, writers, tokens, held_out)}
    fits = fit_removed_runs(model, session, writers, tokens, held_out)
    return {"method": "lstsq", "fits": fits}


def score_model(model: onnx.ModelProto, config: PruneConfig) -> ScoreTable:
    """`onnxdepth score`: every prunable unit's importance under CONFIG, on the unpruned model."""
    asked_fit = config.compensate == "lstsq"  # asked for, not resolved from auto (that stays one damage)
    session, config = new_session(model, config)
    model = session.model  # fused skip-norms split (`graph.contrib`)
    check_distributable(config, session)
    if asked_fit and (session.granularity != "block" or config.importance != "angular"):
        raise InvalidArgumentError("score --compensate lstsq: not yet supported here (the damage after the fit is "
                                   "measured for --granularity block --importance angular on a pre-norm "
                                   "transformer)")
    if config.importance in UNIT_METRICS:
        with pool_for(config, session) as pool:
            table = score_units(model, session, config.importance, config.calibration, pool=pool)
        if asked_fit:
            table.after_fit = _damage_after_fit(model, session, config)
        return table
    if config.importance == "taylor":
        from .importance.taylor_calibration import attach_lm_taylor, taylor_refresh

        if session.layers:
            attach_lm_taylor(model, session, config.calibration)
        else:
            taylor_refresh(model, session, config.calibration)(session)
    return ScoreTable({p.unit_id: p.score for p in session.prunable_plans()})


def _damage_after_fit(model: onnx.ModelProto, session: PruneSession, config: PruneConfig) -> dict[str, float]:
    """`score --compensate lstsq`: every block and run row's held-out angular damage once its least-squares
    fit is folded (`compensate.runs.fitted_run_table`), beside the plain damage."""
    from .compensate import stream_writers

    writers = stream_writers(session)
    if not writers:
        raise InvalidArgumentError("score --compensate lstsq: not yet supported for this model (the damage after "
                                   "the fit is measured on a pre-norm transformer)")
    from .compensate.runs import fitted_run_table

    calibration = config.calibration
    table = fitted_run_table(model, writers, calibration.tokens("--compensate lstsq"),
                             calibration.held_out_tokens("--compensate lstsq"))
    return ScoreTable.from_layer_runs(table).rows()


# -- the pipeline -------------------------------------------------------------------------------------------
def prune_model(model: onnx.ModelProto, config: PruneConfig, *, scores: ScoreTable | None = None,
                on_step: Callable[[UnitPlan, float], None] | None = None, checkpoints: Sequence[float] = (),
                on_checkpoint: Callable[[float, PruneResult], None] | None = None) -> PruneResult:
    """Prune MODEL as CONFIG asks until its ratio of the parameters is gone, and verify the result.

    SCORES (a table from `onnxdepth score`) replace the importance stage. CHECKPOINTS (ratios below the
    target): the selection is a sequence of units and a smaller ratio visits a prefix of it, so the model
    at each checkpoint is materialised, verified and handed to ON_CHECKPOINT(ratio, result) on the way, in
    one run (sweeps pay for the scoring once).
    """
    pending = sorted(r for r in checkpoints if 0.0 < r < config.ratio)
    session, config = new_session(model, config, checkpoints=bool(pending and on_checkpoint is not None),
                                  scores=scores)
    source, model = model, session.model  # fused skip-norms split (`graph.contrib`): the graph every stage reads
    if config.ratio == 0.0 and config.latency_ratio is None:
        # Nothing to remove: the model is returned as it is, so outputs are bit-identical.
        out = onnx.ModelProto()
        out.CopyFrom(source)
        result = PruneResult(out, session.params_before, session.params_before, [])
        return _finish(result, _plan_record(session, result, config, None), model, session, config.verify,
                       _fidelity_data(config))
    strategy = strategy_for(config, bool(session.layers))
    strategy.check(config, session, scores)
    if pending and not strategy.prefix_stable:
        raise InvalidArgumentError("checkpoints: Gromov's contiguous choice depends on the ratio (a smaller ratio is "
                                   "not a prefix); prune each ratio on its own")
    writers = stream_writers_for(session, config.compensate)
    objective = _latency_objective(model, session, config, strategy, bool(pending))
    if pending and on_checkpoint is not None:
        if writers or chain_refits(session, config.compensate):
            raise InvalidArgumentError("checkpoints with --compensate lstsq: not yet supported (a checkpoint would "
                                       "need its own refits); prune each ratio on its own")
        on_step = _checkpointing(model, session, config, strategy, pending, on_step, on_checkpoint)
    table = importance_stage(model, session, config, strategy, scores, writers)
    job = Selection(model, session, config, table, on_step, objective=objective)
    steps = strategy.select(job)
    latency = {"latency": objective.record(session)} if objective is not None else {}
    compensation = compensation_stage(model, session, config.calibration, writers, config.compensate)
    result = PruneResult(session.to_model(model), session.params_before, session.params(),
                         [s.unit_id for s in steps], [s.describe() for s in steps],
                         latency_reduction=latency["latency"]["reduction"] if latency else None)
    plan = {**_plan_record(session, result, config, strategy), **job.notes, **latency, "compensation": compensation}
    return _finish(result, plan, model, session, config.verify, _fidelity_data(config))


def _latency_objective(model: onnx.ModelProto, session: PruneSession, config: PruneConfig, strategy: Strategy,
                       checkpoints: bool):
    """The latency objective CONFIG asks for (`onnxdepth.latency`; the model profiled), or None."""
    if not config.wants_latency:
        return None
    if checkpoints:
        raise InvalidArgumentError("checkpoints with --objective latency / --latency-ratio: not yet supported; prune "
                                   "each ratio on its own")
    from .latency.objective import objective_for

    return objective_for(model, session, config, strategy.name)


def _checkpointing(model, session: PruneSession, config: PruneConfig, strategy: Strategy, pending: list[float],
                   on_step, on_checkpoint) -> Callable:
    """An on_step hook that materialises, verifies and hands over the model at each of PENDING's ratios."""
    taken: list = []

    def hook(plan, reduction: float) -> None:
        taken.append(plan)
        if on_step is not None:
            on_step(plan, reduction)
        while pending and reduction >= pending[0]:
            target = pending.pop(0)
            partial = PruneResult(session.to_model(model), session.params_before, session.params(),
                                  [s.unit_id for s in taken], [s.describe() for s in taken])
            record = _plan_record(session, partial, dataclasses.replace(config, ratio=target), strategy)
            on_checkpoint(target, _finish(partial, record, model, session, config.verify, _fidelity_data(config)))

    return hook


def _plan_record(session: PruneSession, result: PruneResult, config: PruneConfig,
                 strategy: Strategy | None) -> dict:
    """The plan JSON of RESULT: the options it was made with (the PruneConfig's fields, at the top level),
    the selection strategy, what it removed and every step (replayable)."""
    method = ("Algorithm 8" if config.granularity == "fine" else f"{config.granularity} ranking") \
        if session.layers else "Algorithm 9"
    return {"onnxdepth_version": __version__, "method": f"depth pruning ({method})",
            "selection": strategy.name if strategy is not None else None, **config.to_json(),
            "layers": len(session.layers), **result.summary(), "removed_graph_io": list(session.removed_graph_io),
            "steps": result.steps}


def _fidelity_data(config: PruneConfig) -> Calibration | None:
    """The calibration the fidelity line draws its held-out data as, or None when the prune skips it."""
    return config.calibration if config.fidelity else None


def _finish(result: PruneResult, plan: dict, model: onnx.ModelProto, session: PruneSession,
            verify: bool, fidelity: Calibration | None = None) -> PruneResult:
    """Verify RESULT against MODEL, measure its held-out fidelity (FIDELITY: the calibration it is drawn as;
    `onnxdepth.fidelity`) and record PLAN (with the fidelity) in its metadata, before anything is written."""
    if verify:
        verify_model(result.model, model, session.input_shapes, removed=set(session.removed_graph_io))
    if fidelity is not None:
        from .fidelity import held_out_fidelity

        plan["fidelity"] = held_out_fidelity(result.model, model, fidelity, session.input_shapes)
    record_plan(result, plan)
    return result


def record_plan(result: PruneResult, plan: dict) -> None:
    """PLAN as RESULT's plan and in its model's metadata (replacing any plan recorded before)."""
    write_plan_metadata(result.model, plan)
    result.plan = plan


def write_plan_metadata(model: onnx.ModelProto, plan: dict) -> None:
    """PLAN in MODEL's metadata (`PLAN_METADATA_KEY`), replacing any plan recorded before."""
    props = model.metadata_props
    kept = [(p.key, p.value) for p in props if p.key != PLAN_METADATA_KEY]
    del props[:]
    for key, value in [*kept, (PLAN_METADATA_KEY, json.dumps(plan, separators=(",", ":")))]:
        entry = props.add()
        entry.key, entry.value = key, value


def plan_metadata(model: onnx.ModelProto) -> dict | None:
    """The plan in MODEL's metadata (None: none, or not JSON)."""
    for entry in model.metadata_props:
        if entry.key == PLAN_METADATA_KEY:
            try:
                return json.loads(entry.value)
            except ValueError:
                return None
    return None


def replay_plan(model: onnx.ModelProto, plan: dict, *, input_shapes: dict | None = None,
                verify: bool = True, fidelity: Calibration | None = None) -> PruneResult:
    """Apply a saved plan's units in its order: the same pruned model, with no scoring (for pipelines).

    Channel choices are recomputed deterministically from the weights (magnitude, Eq. 3.10), as when
    the plan was made.
    """
    try:
        granularity = plan.get("granularity", "fine")
        unit_ids = [step["unit"] for step in plan["steps"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgumentError("--plan: not an onnxdepth plan (needs granularity and steps[].unit)") from exc
    session = PruneSession(model, input_shapes=input_shapes, granularity=granularity,
                           head=plan.get("head", "branches"))
    model = session.model  # fused skip-norms split (`graph.contrib`)
    compensated = (plan.get("compensation") or {}).get("method", "none") != "none"
    writers = stream_writers_for(session, "lstsq") if compensated else []
    for unit_id in unit_ids:
        step = session.plan(unit_id)
        if step.reason is not None:
            raise InvalidArgumentError(f"--plan: unit {unit_id} cannot be pruned in this model: {step.reason}")
        session.apply(step)
    record = dict(plan)
    if compensated:
        # The same fits on the same calibration windows: the same weights.
        record["compensation"] = compensation_stage(model, session, _plan_calibration(plan), writers, "lstsq")
    out = session.to_model(model)
    result = PruneResult(out, session.params_before, session.params(), unit_ids, list(plan["steps"]))
    return _finish(result, {**record, **result.summary(), "removed_graph_io": list(session.removed_graph_io),
                            "replayed": True}, model, session, verify, fidelity)


def _plan_calibration(plan: dict) -> Calibration:
    """The calibration a plan was made with (its `calibration` record)."""
    try:
        return Calibration(**plan["calibration"])
    except (KeyError, TypeError) as exc:
        raise InvalidArgumentError("--plan: a compensated plan needs its calibration record") from exc


# -- files -------------------------------------------------------------------------------------------------
def plan_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".plan.json")


def _save(result: PruneResult, src, out: Path) -> PruneResult:
    """Write RESULT to OUT (and its plan beside it); a GenAI folder's decoder gets its caches renumbered and a
    matching genai_config.json (`onnxdepth.genai`), the renamed file checked again from disk."""
    result.plan["source"] = str(src)
    genai_config = genai.config_beside(src)
    if genai_config is not None:
        result.plan["renamed_graph_io"] = genai.renumber_caches(result.model, genai_config)
    written = folder_of(result.model) is not None or genai_config is not None
    save_model_atomic(result.model, out, check=written_file_check(src, result.plan) if written else None)
    if genai_config is not None:
        genai.write_folder(src, out, result.model, genai_config)
    write_json_atomic(plan_path_for(out), result.plan)
    return result


def prune_file(src: str | os.PathLike, out: str | os.PathLike, config: PruneConfig, *,
               scores: ScoreTable | None = None, on_step: Callable | None = None,
               prune: Callable[..., PruneResult] | None = None) -> PruneResult:
    """Load SRC, prune as CONFIG asks (its calibration reads the tokenizer beside SRC), verify, and write
    OUT and OUT's plan JSON atomically. PRUNE(model, config, scores=, on_step=) replaces `prune_model`
    (`budget.prune_within_drop`)."""
    out = check_output_path(out, src)
    model = load_model(src)
    config = dataclasses.replace(config, calibration=config.calibration.for_model(src))
    return _save((prune or prune_model)(model, config, scores=scores, on_step=on_step), src, out)


def replay_file(src: str | os.PathLike, out: str | os.PathLike, plan: dict, *,
                input_shapes: dict | None = None) -> PruneResult:
    """Load SRC, replay PLAN on it, verify, and write OUT and OUT's plan JSON atomically."""
    out = check_output_path(out, src)
    return _save(replay_plan(load_model(src), plan, input_shapes=input_shapes), src, out)


def prune_file_cached(src: str | os.PathLike, out: str | os.PathLike, config: PruneConfig, *,
                      scores: ScoreTable | None = None) -> tuple[Path, dict, bool]:
    """Like prune_file, but reuse OUT when its plan JSON records the same source and the same options
    (benchmarks and tools that revisit the same points). Returns (OUT, plan, reused)."""
    src, out = Path(src), Path(out)
    plan = cached_plan(src, out, config)
    if plan is not None:
        return out, plan, True
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, prune_file(src, out, config, scores=scores).plan, False


def stored_plan(path: str | os.PathLike) -> dict:
    """The plan in the metadata of the model at PATH (weights are not read); InvalidArgumentError when the
    model was not pruned by onnxdepth, ModelLoadError when it is not a readable ONNX file."""
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)  # the plan is metadata: weights not needed
    except (OSError, DecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    plan = plan_metadata(model)
    if plan is not None:
        return plan
    raise InvalidArgumentError(f"{path}: no onnxdepth plan in its metadata ({PLAN_METADATA_KEY}); "
                               "was it pruned by onnxdepth?")


def cached_plan(src: str | os.PathLike, out: str | os.PathLike, config: PruneConfig) -> dict | None:
    """The plan of OUT when prune_file_cached would reuse it (same source, ratio, granularity, importance,
    search space)."""
    src, out = Path(src), Path(out)
    try:
        plan = json.loads(plan_path_for(out).read_text()) if out.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(plan, dict) or plan.get("search_space", "full") != config.search_space:
        return None
    # Options left to `auto` are compared as they were asked (the plan's `requested`), the rest as recorded.
    asked = {**{k: plan.get(k) for k in AUTO_OPTIONS}, **plan.get("requested", {})}
    wanted = {"ratio": config.ratio, **{k: getattr(config, k) for k in (*AUTO_OPTIONS, *LATENCY_OPTIONS)}}
    recorded = {"ratio": plan.get("ratio"), **asked, **{k: plan.get(k, LATENCY_DEFAULTS[k]) for k in LATENCY_OPTIONS}}
    recorded.setdefault("compensate", "none")
    if recorded == wanted and plan.get("source") and Path(plan["source"]).resolve() == src.resolve():
        return plan
    return None
