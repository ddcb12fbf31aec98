"""Selection strategies: which units a prune removes, in which order, given the importance stage's scores.

One strategy per method, chosen from the `PruneConfig` (first that applies, in `STRATEGIES` order):

- `rescore`: `--rescore-every N`: moves re-scored on the model as it is pruned (`onnxdepth.rescore`);
- `grouped`: `--ranking grouped`: single units, whole MLPs and whole layers scored once;
- `fitted-run`: the same with `--compensate lstsq`: the contiguous run that predicts held-out text best
  once its least-squares fit is folded in;
- `gromov`: block granularity with angular importance: Gromov et al.'s most similar contiguous run;
- `ranked`: transformers, scores fixed up front (Algorithm 8 at fine granularity, one ranking otherwise);
- `iterative`: everything else (CNNs): Algorithm 9, the lowest unit re-planned and pruned one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from .config import PruneConfig
from .errors import InvalidArgumentError
from .prune.session import PruneSession
from .scores import ScoreTable

__all__ = ["STRATEGIES", "Selection", "Strategy", "strategy_for"]


@dataclass
class Selection:
    """What a strategy works on: the session it prunes, the source model, the options and the scores."""

    model: onnx.ModelProto
    session: PruneSession
    config: PruneConfig
    scores: ScoreTable | None
    on_step: Callable | None
    notes: dict = field(default_factory=dict)  # what the strategy measured on the way, for the plan
    objective: object | None = None  # `onnxdepth.latency.Objective`: rank per ms saved / a latency target


class Strategy:
    """A selection method. `applies` picks it for a config; `check` refuses what it cannot do; `select`
    prunes the session to the ratio and returns the plans applied, in order."""

    name = ""
    #: False when the units chosen for a smaller ratio are not a prefix of those for a larger one.
    prefix_stable = True
    #: True when the strategy scores on its own (no importance stage before it).
    scores_itself = False

    def applies(self, config: PruneConfig, transformer: bool) -> bool:
        """True if this strategy is the one for CONFIG on a model with (TRANSFORMER) or without layers."""
        raise NotImplementedError

    def check(self, config: PruneConfig, session: PruneSession, scores: ScoreTable | None) -> None:
        """Raise InvalidArgumentError if this strategy cannot run with these options."""

    def select(self, job: Selection) -> list:
        raise NotImplementedError


class _Searched(Strategy):
    scores_itself = True
    flag = ""

    def check(self, config, session, scores):
        if config.importance not in ("angular", "cross_entropy") or config.granularity != "fine" or not session.layers:
            raise InvalidArgumentError(f"{self.flag} needs --importance angular or cross_entropy and --granularity "
                                       "fine on a transformer")
        if scores is not None:
            raise InvalidArgumentError(f"{self.flag} scores moves on the model as it is pruned: a --scores table "
                                       "cannot be reused")


class Rescoring(_Searched):
    name, flag = "rescore", "--rescore-every"

    def applies(self, config, transformer):
        return bool(config.rescore_every)

    def check(self, config, session, scores):
        from .compensate.images import is_image_model

        if session.layers or not is_image_model(session):
            return super().check(config, session, scores)
        if config.importance != "angular" or scores is not None:
            raise InvalidArgumentError(f"{self.flag} on a CNN measures angular distance on the graph outputs: it "
                                       "needs --importance angular and no --scores table")

    def select(self, job):
        from .rescore import prune_with_rescoring

        config = job.config
        if not job.session.layers:
            from .importance.output_search import prune_with_output_rescoring

            return prune_with_output_rescoring(job.model, job.session, config.ratio, config.calibration,
                                               every=config.rescore_every, shortlist=config.shortlist,
                                               objective=job.objective, on_step=job.on_step)
        tokens = config.calibration.tokens(self.flag)
        return prune_with_rescoring(job.model, job.session, config.ratio, config.rescore_every, tokens,
                                    importance=config.importance, ranking=config.ranking, shortlist=config.shortlist,
                                    on_step=job.on_step)


class Grouped(_Searched):
    name, flag = "grouped", "--ranking grouped"

    def applies(self, config, transformer):
        return config.ranking == "grouped"

    def select(self, job):
        from .rescore import prune_grouped_one_shot

        tokens = job.config.calibration.tokens(self.flag)
        return prune_grouped_one_shot(job.model, job.session, job.config.ratio, tokens,
                                      importance=job.config.importance, on_step=job.on_step)


class GromovRun(Strategy):
    """Gromov et al.: the fewest contiguous layers that reach the ratio, placed where they change least."""

    name = "gromov"
    prefix_stable = False

    def applies(self, config, transformer):
        return transformer and config.granularity == "block" and config.importance == "angular" \
            and config.block_choice == "gromov" and config.ordering == "ascending"

    def select(self, job):
        from .select import gromov_order, prune_one_shot

        session, ratio = job.session, job.config.ratio
        table = job.scores.run_table(len(session.layers)) if job.scores is not None else None
        if table is None:
            raise InvalidArgumentError("--block-choice gromov needs the distances of runs of layers: use a score "
                                       "table written by `onnxdepth score --granularity block`, or --block-choice "
                                       "ranking")
        return prune_one_shot(session, ratio, gromov_order(table, self.run_length(session, ratio)),
                              on_step=job.on_step)

    @staticmethod
    def run_length(session: PruneSession, ratio: float) -> int:
        """The fewest whole layers whose parameters reach RATIO."""
        per_layer = [session.plan(f"layer{l}.block").params_removed for l in range(len(session.layers))]
        n = 1
        while n < len(per_layer) and sum(sorted(per_layer)[:n]) < ratio * session.params_before:
            n += 1
        return n


class FittedRun(GromovRun):
    """Gromov's contiguous run with `--compensate lstsq` on a pre-norm stream: the run whose compensated model
    predicts held-out calibration text best (`compensate.runs.choose_fitted_run`), not the most similar one.
    A given score table, or a model without a pre-norm stream (post-norm encoders), takes Gromov's choice."""

    name = "fitted-run"
    scores_itself = True

    def applies(self, config, transformer):
        return super().applies(config, transformer) and config.compensate == "lstsq"

    def select(self, job):
        from .compensate import stream_writers
        from .select import prune_one_shot

        session, config = job.session, job.config
        tokens = config.calibration.tokens("--compensate lstsq")
        writers = stream_writers(session)
        if job.scores is not None or not writers:
            if job.scores is None:
                from .importance.angular import run_distances

                job.scores = ScoreTable.from_layer_runs(run_distances(job.model, session, tokens))
            return super().select(job)
        from .compensate.runs import choose_fitted_run

        n = self.run_length(session, config.ratio)
        first, records = choose_fitted_run(job.model, writers, tokens, config.calibration.held_out_tokens(), n)
        job.notes["fitted_runs"] = records
        return prune_one_shot(session, config.ratio, [f"layer{first + k}.block" for k in range(n)],
                              on_step=job.on_step)


class Ranked(Strategy):
    """Transformers with scores fixed up front: Algorithm 8 (fine) or one ranking (sublayer, block)."""

    name = "ranked"

    def applies(self, config, transformer):
        return transformer

    def select(self, job):
        from .select import prune_transformer

        config = job.config
        units = job.scores.units if job.scores is not None else None
        return prune_transformer(job.session, config.ratio, ordering=config.ordering, seed=config.seed, scores=units,
                                 ranking=config.ranking, on_step=job.on_step, objective=job.objective)


class Iterative(Strategy):
    """Algorithm 9: re-plan every unit after each prune and take the lowest; Taylor is re-scored each time."""

    name = "iterative"

    def applies(self, config, transformer):
        return True

    def select(self, job):
        from .importance.taylor_calibration import taylor_refresh
        from .select import prune_to_ratio

        config = job.config
        refresh = taylor_refresh(job.model, job.session, config.calibration) if config.importance == "taylor" \
            else None
        units = job.scores.units if job.scores is not None else None
        return prune_to_ratio(job.session, config.ratio, ordering=config.ordering, seed=config.seed,
                              on_step=job.on_step, refresh=refresh, objective=job.objective, unit_scores=units)


#: Checked in order: the first strategy that applies to a config is the one it runs.
STRATEGIES: tuple[Strategy, ...] = (Rescoring(), Grouped(), FittedRun(), GromovRun(), Ranked(), Iterative())


def strategy_for(config: PruneConfig, transformer: bool) -> Strategy:
    """The strategy CONFIG runs on a model with (TRANSFORMER) or without attention layers."""
    return next(s for s in STRATEGIES if s.applies(config, transformer))


def prefix_stable(name: str | None) -> bool:
    """True if the strategy recorded as NAME (a plan's `selection`) picks, for a smaller ratio, a prefix of
    the units it picks for a larger one; unknown names are treated as not prefix-stable."""
    pending, seen = [Strategy], {}
    while pending:
        cls = pending.pop()
        seen[cls.name] = cls.prefix_stable
        pending.extend(cls.__subclasses__())
    return True if name is None else seen.get(name, False)  # None: nothing was selected (ratio 0)
