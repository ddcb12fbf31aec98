"""What a prune is asked to do: `PruneConfig` (validated once, serialised into the plan) and `Calibration`.

`prune_model(model, PruneConfig(ratio=0.3, importance="angular", calibration=Calibration("valid.txt")))`
is the library call the CLI makes; every option the plan records lives here, nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["AUTO", "BLOCK_CHOICES", "COMPENSATIONS", "Calibration", "GRANULARITIES", "HEADS", "OBJECTIVES", "ORDERINGS",
           "PruneConfig", "RANKINGS", "SEARCH_SPACES"]

#: An option left to `onnxdepth.defaults` (resolved per model before anything runs; plans record the value).
AUTO = "auto"
#: Transformer unit granularities: attention + MLP transforms, attention + MLP sub-layers, whole layers.
GRANULARITIES = ("fine", "sublayer", "block")
#: Unit search spaces: every unit, or (CNN baseline) only those that keep the channel count.
SEARCH_SPACES = ("full", "reduced")
#: Visiting order of a ranking: lowest importance first (the method), highest first, or random (ablations).
ORDERINGS = ("ascending", "descending", "random")
#: Transformer rankings: Algorithm 8's split attention / MLP rankings, one shared ranking per parameter, or
#: groups of units per layer (`onnxdepth.rescore`).
RANKINGS = ("split", "global", "grouped")
#: Block granularity: Gromov et al.'s contiguous run of the most similar layers, or a plain ranking.
BLOCK_CHOICES = ("gromov", "ranking")
#: Reconstruction after pruning (`onnxdepth.compensate`): none, least-squares refits folded into the
#: surviving weights, or (auto) lstsq where it applies and calibration data is given (`onnxdepth.defaults`).
COMPENSATIONS = ("none", "lstsq", "auto")
#: What a selection ranks units by: importance alone (per parameter budget) or importance per ms saved
#: (`onnxdepth.latency`).
OBJECTIVES = ("params", "latency")
#: The graph head kept out of pruning (`graph.head.find_head`): each output's last transform and the chains
#: of transforms behind it up to a fork of the trunk (Detect branches), or only each output's last transform.
HEADS = ("branches", "last")


def _one_of(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgumentError(f"{flag} {value}: expected one of {', '.join(allowed)}")


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InvalidArgumentError(f"{flag} {value}: must be at least 1")


@dataclass(frozen=True)
class Calibration:
    """Calibration data, resolved once per prune: where it comes from and how much of it.

    SOURCE is a file or folder (`--calib`; text, JSONL, .npz, images) or None for the embedded default
    (text sampled from the model, packaged photos, rendered text lines). Text models take SEQUENCES
    windows of LENGTH tokens; MODEL_PATH is the model file whose directory holds the tokenizer.
    HELD_OUT_SEQUENCES more windows, sharing no token with the calibration windows (which they leave as
    they are), check the fits (ridge, skip) and the compensated run choice; FIDELITY_SEQUENCES further
    windows, sharing no token with either, are the held-out data of the fidelity line (`onnxdepth.fidelity`).
    """

    source: str | None = None
    sequences: int = 32
    length: int = 128
    seed: int = 0
    model_path: str | None = None
    held_out_sequences: int = 8
    fidelity_sequences: int = 16
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _at_least_one("--calib-sequences", self.sequences)
        _at_least_one("--calib-length", self.length)
        if self.held_out_sequences < 0:
            raise InvalidArgumentError(f"held-out sequences {self.held_out_sequences}: must be at least 0")
        _at_least_one("fidelity sequences", self.fidelity_sequences)
        if self.source is not None:
            object.__setattr__(self, "source", str(self.source))
        if self.model_path is not None:
            object.__setattr__(self, "model_path", str(self.model_path))

    def for_model(self, model_path: str | os.PathLike) -> "Calibration":
        """This calibration with MODEL_PATH filled in when it was not given."""
        if self.model_path is not None:
            return self
        return Calibration(self.source, self.sequences, self.length, self.seed, str(model_path),
                           self.held_out_sequences, self.fidelity_sequences)

    def _tokenizer_model(self, what: str) -> Path:
        if self.model_path is None:
            raise InvalidArgumentError(f"{what} needs the model's path (its tokenizer sits beside it)")
        return Path(self.model_path)

    def tokens(self, what: str = "calibration") -> np.ndarray:
        """Calibration token windows [sequences, length] of a text model (cached; WHAT names the caller in
        errors)."""
        if "tokens" not in self._cache:
            from .calibration import calibration_tokens

            self._cache["tokens"] = calibration_tokens(self.source, self._tokenizer_model(what), n_seq=self.sequences,
                                                       seq_len=self.length, seed=self.seed)
        return self._cache["tokens"]

    def held_out_tokens(self, what: str = "held-out check") -> np.ndarray:
        """HELD_OUT_SEQUENCES windows [k, length] sharing no token with `tokens()` (cached; empty without any)."""
        if "held_out" not in self._cache:
            from .calibration import held_out_tokens

            self._cache["held_out"] = held_out_tokens(self.source, self._tokenizer_model(what), n_seq=self.sequences,
                                                      seq_len=self.length, count=self.held_out_sequences,
                                                      seed=self.seed)
        return self._cache["held_out"]

    def fidelity_tokens(self, what: str = "fidelity check") -> np.ndarray:
        """FIDELITY_SEQUENCES windows [k, length] sharing no token with `tokens()` nor `held_out_tokens()`: the
        held-out data of the fidelity line, which no selection or fit sees (cached)."""
        if "fidelity" not in self._cache:
            from .calibration import fidelity_tokens

            self._cache["fidelity"] = fidelity_tokens(self.source, self._tokenizer_model(what), n_seq=self.sequences,
                                                      seq_len=self.length, count=self.fidelity_sequences,
                                                      fits_count=self.held_out_sequences, seed=self.seed)
        return self._cache["fidelity"]

    def to_json(self) -> dict:
        return {"source": self.source, "sequences": self.sequences, "length": self.length, "seed": self.seed,
                "model_path": self.model_path, "held_out_sequences": self.held_out_sequences,
                "fidelity_sequences": self.fidelity_sequences}


@dataclass(frozen=True)
class PruneConfig:
    """Every option of one prune. Validated on construction; `to_json()` is what the plan records."""

    ratio: float
    importance: str = AUTO
    granularity: str = AUTO
    ordering: str = "ascending"
    ranking: str = "split"
    rescore_every: int | None = None
    shortlist: int | None = None
    block_choice: str = "gromov"
    compensate: str = AUTO
    search_space: str = "full"
    exclude: str | None = None
    input_shapes: dict | None = None
    seed: int = 0
    calibration: Calibration = field(default_factory=Calibration)
    verify: bool = True
    #: End with the held-out fidelity line (`onnxdepth.fidelity`; recorded in the plan as `fidelity`).
    fidelity: bool = True
    #: Rank by OBJECTIVE; LATENCY_RATIO (instead of RATIO): stop once that share of the profiled latency is gone.
    objective: str = "params"
    latency_ratio: float | None = None
    #: Where the latency profile is measured: the provider, intra-op threads and profiled runs.
    device: str = "cpu"
    profile_threads: int = 1
    profile_runs: int = 10
    head: str = "branches"
    #: Block-local scoring on Ray (`onnxdepth.distributed`): a local runtime of WORKERS CPUs, or a cluster.
    workers: int | None = None
    ray_address: str | None = None
    #: The options as asked, before `onnxdepth.defaults` resolved `auto` (set by it; the plan's `requested`).
    requested: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise InvalidArgumentError(f"--ratio {self.ratio:g}: must be in [0, 1)")
        from .importance import get_metric

        if self.importance != AUTO:
            get_metric(self.importance)  # an unknown metric is refused here, with the list of known ones
        _one_of("--granularity", self.granularity, (*GRANULARITIES, AUTO))
        _one_of("--ordering", self.ordering, ORDERINGS)
        _one_of("--ranking", self.ranking, RANKINGS)
        _one_of("--block-choice", self.block_choice, BLOCK_CHOICES)
        _one_of("--compensate", self.compensate, COMPENSATIONS)
        _one_of("--search-space", self.search_space, SEARCH_SPACES)
        _at_least_one("--rescore-every", self.rescore_every)
        _at_least_one("--shortlist", self.shortlist)
        _at_least_one("--workers", self.workers)
        _one_of("--objective", self.objective, OBJECTIVES)
        _one_of("--head", self.head, HEADS)
        self._check_latency()
        if self.shortlist is not None and not self.rescore_every:
            raise InvalidArgumentError("--shortlist only applies with --rescore-every")

    def _check_latency(self) -> None:
        from .runtime import DEVICES

        if self.latency_ratio is not None:
            if isinstance(self.latency_ratio, bool) or not 0.0 < self.latency_ratio < 1.0:
                raise InvalidArgumentError(f"--latency-ratio {self.latency_ratio!r}: must be in (0, 1)")
            if self.ratio:
                raise InvalidArgumentError("--ratio and --latency-ratio: give one target, not both")
        _one_of("--device", self.device, DEVICES)
        _at_least_one("--profile-threads", self.profile_threads)
        _at_least_one("--profile-runs", self.profile_runs)

    @property
    def wants_latency(self) -> bool:
        """True when the selection needs a latency profile (the latency objective or a latency target)."""
        return self.objective == "latency" or self.latency_ratio is not None

    @property
    def searched(self) -> bool:
        """True when moves are scored on the model as it is pruned (--rescore-every, --ranking grouped)."""
        return bool(self.rescore_every) or self.ranking == "grouped"

    def to_json(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("calibration", "verify", "fidelity", "requested", "workers", "ray_address")}
        if self.requested is not None:
            record["requested"] = dict(self.requested)
        record["calibration"] = self.calibration.to_json()
        if self.input_shapes is not None:
            record["input_shapes"] = {name: list(dims) for name, dims in self.input_shapes.items()}
        return record
