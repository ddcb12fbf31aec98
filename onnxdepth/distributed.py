"""Block-local scoring past one process: each layer's scoring job runs on Ray (`--workers N`, `--ray-address`).

Angular importance at fine / sublayer granularity scores every unit on its own cut-out layer
(`importance.angular`): the layer's sub-model, the cached hidden states entering and leaving it, and the
model's other feeds (masks, positions) are all a job needs. The driver runs the whole model once to cache
the layer boundaries, puts each boundary's arrays into Ray's object store once (a boundary is the output of
one layer and the input of the next), and submits one task per layer; a worker holds only the layers it is
scoring. Sub-models with external data are shipped with their (one layer's) weights inlined, so a worker on
another machine needs no copy of the model. The scores are the single-process ones, bit for bit: the same
cut-out, the same ONNX Runtime runs, the same sums.

Ray is an optional extra (`pip install 'onnxdepth[ray]'`); without `--workers` / `--ray-address` nothing
here is imported.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["RayPool", "check_distributable", "pool_for", "ray_pool"]

logger = logging.getLogger(__name__)


class RayPool:
    """A Ray runtime (started locally with N worker CPUs, or joined at an address) that scores layer jobs."""

    def __init__(self, workers: int | None, address: str | None):
        try:
            import ray
        except ImportError as exc:
            raise InvalidArgumentError("--workers / --ray-address: Ray is not installed (pip install "
                                       "'onnxdepth[ray]')") from exc
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address is not None:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InvalidArgumentError(f"--ray-address {address}: cannot join the Ray cluster ({exc})") from exc
        logger.info("ray: %s, %s CPUs", "started locally" if address is None else f"joined {address}",
                    int(ray.cluster_resources().get("CPU", 0)))

    def score_layers(self, function, jobs: list, hidden: dict[str, list[np.ndarray]], feeds: list[dict],
                     threads: int | None, shared: tuple = ()) -> list:
        """FUNCTION(job, start arrays, end arrays, feeds, threads, *SHARED) of every job (`importance.layer_jobs`),
        as Ray tasks of one CPU each; every boundary's arrays, the feeds and each of SHARED are put in the object
        store once."""
        remote = self.ray.remote(num_cpus=1)(function)
        refs = {name: self.ray.put(hidden[name]) for name in {n for job in jobs for n in (job.start, job.end)}}
        feeds_ref = self.ray.put(feeds)
        shared_refs = [self.ray.put(value) for value in shared]
        pending = [remote.remote(job, refs[job.start], refs[job.end], feeds_ref, threads, *shared_refs)
                   for job in jobs]
        return self.ray.get(pending)

    def cpus(self) -> int:
        """The cluster's CPUs: one task or actor each."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def put(self, value):
        """VALUE in the object store (its ref, resolved when passed as a task or actor argument)."""
        return self.ray.put(value)

    def actor(self, cls, *args):
        """A Ray actor of CLS(*ARGS) on one CPU (its methods are called with ``.remote``)."""
        return self.ray.remote(num_cpus=1)(cls).remote(*args)

    def get(self, refs: list) -> list:
        return self.ray.get(refs)

    def map(self, function, items: list, shared: tuple = ()) -> list:
        """FUNCTION(item, *SHARED) of every item as Ray tasks of one CPU each, SHARED put in the object store once."""
        remote = self.ray.remote(num_cpus=1)(function)
        shared_refs = [self.ray.put(value) for value in shared]
        return self.ray.get([remote.remote(item, *shared_refs) for item in items])

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def ray_pool(workers: int | None, address: str | None) -> RayPool | None:
    """A pool when --workers or --ray-address asks for one, else None (everything runs in this process)."""
    if workers is None and address is None:
        return None
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidArgumentError(f"--workers {workers!r}: must be at least 1")
    return RayPool(workers, address)


def pool_for(config, session):
    """A context giving the pool CONFIG's --workers / --ray-address ask for on SESSION, or None; refuses what
    Ray does not score yet."""
    check_distributable(config, session)
    if config.workers is None and config.ray_address is None:
        return contextlib.nullcontext(None)
    return ray_pool(config.workers, config.ray_address)


def check_distributable(config, session) -> None:
    """InvalidArgumentError when --workers / --ray-address ask for what Ray does not score yet."""
    if config.workers is None and config.ray_address is None:
        return
    if config.importance not in ("angular", "cross_entropy") or not session.layers or config.searched:
        raise InvalidArgumentError("--workers / --ray-address: not yet supported here (Ray scores the layers of "
                                   "--importance angular or cross_entropy on a transformer, without "
                                   "--rescore-every / --ranking grouped)")
