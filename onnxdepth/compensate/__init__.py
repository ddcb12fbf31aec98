"""Training-free reconstruction after pruning: least-squares refits folded into the surviving weights.

`--compensate lstsq` (the reconstruction issue): for every run of residual writers that pruning
removed (attention blocks, MLPs, whole layers), the nearest surviving writer before it is refitted by
ridge least squares so that the stream after the run matches the unpruned model's
(`onnxdepth.compensate.residual`). In a post-norm encoder (BERT) every surviving transform and
LayerNormalization after the first pruned layer is refitted instead, in stream order, to reproduce the
unpruned model there (`onnxdepth.compensate.postnorm`). `auto` does either where the model has that
layout and leaves other models as they are; `none` never does.
"""

from __future__ import annotations

from ..config import COMPENSATIONS
from .postnorm import fit_postnorm
from .postnorm_sites import Site, postnorm_sites
from .residual import fit_removed_runs
from .stream import Run, Writer, removed_runs, stream_writers

__all__ = ["COMPENSATIONS", "Run", "Site", "Writer", "fit_postnorm", "fit_removed_runs", "is_postnorm",
           "postnorm_sites", "removed_runs", "stream_writers"]


def is_postnorm(writers: list) -> bool:
    """True if WRITERS (from `api.stream_writers_for`) are post-norm fit sites, not pre-norm stream writers."""
    return bool(writers) and isinstance(writers[0], Site)
