"""ONNX Runtime's own per-node kernel times of a model: run it with the profiler on, parse the trace, cache it.

`profile_model(model, ...)` runs MODEL on random inputs of its input shapes with `enable_profiling`, reads
the JSON trace (events with `cat == "Node"` and a name ending in `_kernel_time`, `dur` in microseconds),
and keeps, per graph node, the median over the profiled runs of its kernel time per run.

Optimization level: the profile is taken at ORT_ENABLE_ALL, ORT's default and what `onnxdepth bench` and a
deployment run. On CPU that level rewrites convolutions to the NCHWc layout and fuses SiLU into QuickGelu,
so kernel names are not the graph's: `<output tensor>_nchwc`, `<node>/QuickGeluFusion/`, `..._token_<n>`;
a fusion (Conv + Relu) is named after its last node but runs the first one's op (`fused_origin`).
They are mapped back to the graph node they came from (`graph_node`); the layout reorders ORT inserts
(`ReorderInput`, `ReorderOutput`) belong to no graph node and are kept as `unattributed_ms`. Measured on
YOLOv8n at 320, one thread: ORT_ENABLE_BASIC (no layout rewrite, names as in the graph) gives 29.0 ms of
kernel time per run against 19.8 ms at ORT_ENABLE_ALL, so a BASIC profile would rank units on a model that
is not the one deployed.

Threads: one by default (`DEFAULT_THREADS`): per-node times on several threads overlap and are noisier.

The profile of a model file is cached beside it (`<model>.onnxdepth-profile.json`), keyed by the file's
SHA-256 and size, the provider, the input shapes, the threads, the runs, the optimization level and the
onnxruntime version; it is written atomically, and a cache whose key differs is ignored (and replaced).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from ..errors import InvalidArgumentError, OnnxDepthError
from ..fileio import write_json_atomic
from ..graph.shapes import concrete_input_shapes
from ..runtime import open_session, ort_errors, providers_for
from ..verify import random_feeds

__all__ = ["CACHE_SUFFIX", "DEFAULT_RUNS", "DEFAULT_THREADS", "OPTIMIZATION", "Profile", "cache_path",
           "fused_origin", "graph_node", "named_copy", "parse_trace", "profile_model"]

logger = logging.getLogger(__name__)

#: The cache file beside a model: MODEL + this suffix.
CACHE_SUFFIX = ".onnxdepth-profile.json"
#: Intra-op threads of the profiled session (per-node times on one thread do not overlap).
DEFAULT_THREADS = 1
#: Profiled runs (after WARMUP_RUNS unprofiled ones); each node's time is the median over them.
DEFAULT_RUNS = 10
WARMUP_RUNS = 3
#: The graph optimization level profiled: ORT's default, the one a deployment runs (see the module docstring).
OPTIMIZATION = "all"
#: Bumped when the cache's layout changes (an older cache is then stale).
CACHE_FORMAT = 1

_KERNEL_SUFFIX = "_kernel_time"
_TOKEN = re.compile(r"_token_\d+$")  # ORT's suffix for a generated name that was already taken


@dataclass
class Profile:
    """Per-node kernel milliseconds of one model on one provider, input shape and thread count."""

    node_ms: dict[str, float]  # graph node name -> median kernel ms per run
    unattributed_ms: float  # kernels ORT added that belong to no graph node (layout reorders)
    key: dict  # what was measured (the cache key)
    run_ms: float = 0.0  # median wall time of one profiled run (ORT's model_run event), for reference
    cache: str | None = None  # the cache file, when there is one
    reused: bool = False  # True when read from the cache
    unmapped: list[str] = field(default_factory=list)  # kernel names not traced to a graph node

    @property
    def total_ms(self) -> float:
        """Kernel milliseconds per run: every node's median plus the unattributed kernels'."""
        return sum(self.node_ms.values()) + self.unattributed_ms

    def to_json(self) -> dict:
        record = asdict(self)
        record.pop("reused")
        record.pop("cache")
        return record

    def summary(self) -> dict:
        """What a plan records of the profile (no per-node table)."""
        attributed = sum(self.node_ms.values())
        return {**{k: v for k, v in self.key.items() if k not in ("file_sha256", "file_size")},
                "total_ms": round(self.total_ms, 4), "attributed_ms": round(attributed, 4),
                "unattributed_ms": round(self.unattributed_ms, 4), "run_ms": round(self.run_ms, 4),
                "cache": self.cache, "reused": self.reused}


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """MODEL with every node named as a PruneSession names it (`PruneSession._name_nodes`: an unnamed or
    duplicate-named node becomes `<op>_<index>`), so that kernel names in the trace match unit node names."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()
    for index, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return copy


def graph_node(kernel: str, node_names: set[str], producers: dict[str, str]) -> str | None:
    """The graph node a profiled kernel (its name less `_kernel_time`) came from, or None.

    Tried in order: the name itself; without ORT's `_token_<n>` suffix; an NCHWc convolution, named after
    its output tensor plus `_nchwc`, as that tensor's producer; a fusion named `<node>/<Fusion>/`, as the
    longest leading part of the path that is a node's name.
    """
    name = _TOKEN.sub("", kernel)
    for candidate in (kernel, name):
        if candidate in node_names:
            return candidate
    if name.endswith("_nchwc"):
        base = name[:-len("_nchwc")]
        if base in node_names:
            return base
        if base in producers:
            return producers[base]
    parts = name.split("/")
    for end in range(len(parts) - 1, 0, -1):
        prefix = "/".join(parts[:end])
        if prefix in node_names:
            return prefix
    return None


def fused_origin(name: str, op_name: str | None, nodes: dict[str, onnx.NodeProto], producers: dict[str, str],
                 depth: int = 3) -> str:
    """The node a fused kernel of op OP_NAME mostly ran, given the node NAME its name maps to.

    ORT names a fusion after its last node's output (Conv + Relu: `<relu output>_nchwc`) but runs the first
    node's op (a Conv): when NAME's op is not OP_NAME, the nearest node of op OP_NAME up to DEPTH producers
    back is taken (breadth first over the inputs), else NAME.
    """
    start = nodes[name]
    if not op_name or start.op_type == op_name:
        return name
    frontier = [start]
    for _ in range(depth):
        following = []
        for node in frontier:
            for tensor in node.input:
                producer = producers.get(tensor)
                if producer is None:
                    continue
                if nodes[producer].op_type == op_name:
                    return producer
                following.append(nodes[producer])
        frontier = following
    return name


def parse_trace(events: list[dict], model: onnx.ModelProto, warmup: int = 0) -> tuple[dict, float, float, list]:
    """Per-node median kernel ms per run, unattributed ms, median run ms and unmapped kernel names, from the
    events of ORT's JSON trace of MODEL (named as `named_copy` names it); the first WARMUP runs are skipped."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[warmup:]
    if not runs:
        raise OnnxDepthError("the ONNX Runtime profile holds no model run")
    nodes = {n.name: n for n in model.graph.node}
    node_names = set(nodes)
    producers = {out: n.name for n in model.graph.node for out in n.output}
    per_run: list[dict[str | None, float]] = [{} for _ in runs]
    unmapped: set[str] = set()
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(_KERNEL_SUFFIX):
            continue
        run = _run_of(event["ts"], runs)
        if run is None:
            continue  # a warm-up run's kernel
        kernel = event["name"][:-len(_KERNEL_SUFFIX)]
        node = graph_node(kernel, node_names, producers)
        if node is None:
            unmapped.add(kernel)
        else:
            node = fused_origin(node, event.get("args", {}).get("op_name"), nodes, producers)
        totals = per_run[run]
        totals[node] = totals.get(node, 0.0) + event["dur"] / 1e3  # dur is in microseconds
    nodes = {name for totals in per_run for name in totals}
    medians = {name: statistics.median(totals.get(name, 0.0) for totals in per_run) for name in nodes}
    unattributed = medians.pop(None, 0.0)
    run_ms = statistics.median((end - start) / 1e3 for start, end in runs)
    return medians, unattributed, run_ms, sorted(unmapped)


def _run_of(ts: int, runs: list[tuple[int, int]]) -> int | None:
    """The index of the run whose [start, end] window holds time TS, or None."""
    for index, (start, end) in enumerate(runs):
        if start <= ts <= end:
            return index
    return None


def cache_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path) + CACHE_SUFFIX)


def _file_identity(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file_sha256": digest.hexdigest(), "file_size": path.stat().st_size}


def _key(model: onnx.ModelProto, path: Path | None, device: str, shapes: dict, threads: int, runs: int) -> dict:
    import onnxruntime as ort

    identity = _file_identity(path) if path is not None else {
        "file_sha256": hashlib.sha256(model.SerializeToString()).hexdigest(), "file_size": None}
    return {"format": CACHE_FORMAT, **identity, "provider": providers_for(device)[0],
            "input_shapes": {name: list(dims) for name, dims in sorted(shapes.items())}, "threads": threads,
            "runs": runs, "optimization": OPTIMIZATION, "onnxruntime": ort.__version__}


def _read_cache(path: Path, key: dict) -> Profile | None:
    """The cached profile at PATH when its key is KEY; None when absent, unreadable or stale."""
    try:
        record = json.loads(path.read_text())
        if record.get("key") != key:
            logger.info("%s: stale latency profile (measured on other inputs or another file); re-profiling", path)
            return None
        return Profile(record["node_ms"], record["unattributed_ms"], key, record.get("run_ms", 0.0), str(path),
                       True, record.get("unmapped", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def profile_model(model: onnx.ModelProto, *, input_shapes: dict | None = None, device: str = "cpu",
                  threads: int = DEFAULT_THREADS, runs: int = DEFAULT_RUNS,
                  model_path: str | os.PathLike | None = None) -> Profile:
    """MODEL's per-node kernel times (see the module docstring). MODEL_PATH: the file MODEL was read from; its
    profile is read from / written to the cache beside it (a stale one is measured again)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"--profile-threads {threads!r}: must be at least 1")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InvalidArgumentError(f"--profile-runs {runs!r}: must be at least 1")
    path = Path(model_path) if model_path is not None and Path(model_path).is_file() else None
    shapes = concrete_input_shapes(model, input_shapes)
    key = _key(model, path, device, shapes, threads, runs)
    cache = cache_path(path) if path is not None else None
    if cache is not None and cache.is_file():
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    profile = _measure(named_copy(model), shapes, device, threads, runs, key)
    if cache is not None:
        try:
            write_json_atomic(cache, {"key": key, **profile.to_json()})
            profile.cache = str(cache)
        except OnnxDepthError as exc:  # a read-only folder: the profile is still good, just not kept
            logger.warning("latency profile not cached: %s", exc)
    return profile


def _measure(model: onnx.ModelProto, shapes: dict, device: str, threads: int, runs: int, key: dict) -> Profile:
    """Run MODEL WARMUP_RUNS + RUNS times with ORT's profiler on; parse and delete the trace."""
    feeds = random_feeds(model, shapes)
    with tempfile.TemporaryDirectory(prefix="onnxdepth-profile-") as folder:
        session = open_session(model, threads=threads, device=device,
                               profile_prefix=os.path.join(folder, "trace"))
        try:
            for _ in range(WARMUP_RUNS + runs):
                session.run(None, feeds)
        except ort_errors() as exc:
            raise InvalidArgumentError(f"the model does not run on inputs {shapes} for its latency profile: "
                                       f"{' '.join(str(exc).split())[:200]}") from exc
        trace = session.end_profiling()
        events = json.loads(Path(trace).read_text())
    node_ms, unattributed, run_ms, unmapped = parse_trace(events, model, warmup=WARMUP_RUNS)
    if unmapped:
        logger.info("latency profile: %d kernels belong to no graph node (%s)", len(unmapped), ", ".join(unmapped[:5]))
    return Profile(node_ms, unattributed, key, run_ms, None, False, unmapped)
