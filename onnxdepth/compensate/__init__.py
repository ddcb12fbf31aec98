"""Training-free reconstruction after pruning: least-squares refits folded into the surviving weights.

`--compensate lstsq` (the reconstruction issue): for every run of residual writers that pruning
removed (attention blocks, MLPs, whole layers), the nearest surviving writer before it is refitted by
ridge least squares so that the stream after the run matches the unpruned model's
(`onnxdepth.compensate.residual`). `auto` does so where the model has a pre-norm residual stream and
leaves other models as they are; `none` never does.
"""

from __future__ import annotations

from ..config import COMPENSATIONS
from .residual import fit_removed_runs
from .stream import Run, Writer, removed_runs, stream_writers

__all__ = ["COMPENSATIONS", "Run", "Writer", "fit_removed_runs", "removed_runs", "stream_writers"]
