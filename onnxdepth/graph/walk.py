"""One traversal over tensors, shared by every graph query that follows data through the graph.

Head detection, the shape-only test and the bounded searches of Algorithms 3-4 all walk tensors
depth-first, each tensor at most once; they differ only in which tensors come next from a tensor
(a consumer's outputs forward, a producer's inputs backward) and where a walk stops.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import onnx_graphsurgeon as gs

__all__ = ["walk", "WalkLimitExceeded"]


class WalkLimitExceeded(Exception):
    """A walk visited more tensors than its limit allowed."""


def walk(starts: Iterable[gs.Tensor], neighbours: Callable[[gs.Tensor], Iterable[gs.Tensor]], *,
         stop: Callable[[gs.Tensor], bool] | None = None, limit: int | None = None) -> Iterator[gs.Tensor]:
    """Yield every tensor reachable from STARTS, each once, depth-first (last start first).

    After a tensor is yielded, the walk continues to NEIGHBOURS(tensor), unless STOP(tensor) is true:
    a stopped tensor is still yielded, but not expanded. NEIGHBOURS is called only once the caller has
    handled the tensor, so a caller may stop early by leaving the loop. With LIMIT, raises
    WalkLimitExceeded when a tensor beyond the first LIMIT would be visited.
    """
    stack = list(starts)
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if limit is not None and len(seen) > limit:
            raise WalkLimitExceeded(f"more than {limit} tensors reached from {tensor.name!r}")
        yield tensor
        if stop is None or not stop(tensor):
            stack.extend(neighbours(tensor))
