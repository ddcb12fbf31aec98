"""What one Ray layer job costs: seconds and memory of scoring one cut-out layer (angular, fine), measured.

    python tools/layer_cost.py MODEL.onnx [--sequences 16] [--length 128] [--layers 2]

Caches the layer boundaries once (the driver's share), then runs `importance.layer_jobs.score_layer_job` for
the first --layers layers in this process, printing per job: wall seconds, the shipped sub-model's bytes,
the boundary arrays' bytes and the process's RSS growth (psutil). docs/scaling.md extrapolates from these.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxdepth.graph.extract import extract_submodel  # noqa: E402
from onnxdepth.graph.io import load_model  # noqa: E402
from onnxdepth.importance.angular import _sub_shapes, cache_layers, layer_boundaries  # noqa: E402
from onnxdepth.importance.layer_jobs import LayerJob, score_layer_job, shippable  # noqa: E402
from onnxdepth.prune.session import PruneSession  # noqa: E402


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    process = psutil.Process()
    model = load_model(args.model)
    session = PruneSession(model)
    vocab = max(int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 2)
    tokens = np.random.default_rng(0).integers(0, vocab, (args.sequences, args.length)).astype(np.int64)
    started = time.perf_counter()
    cache = cache_layers(model, layer_boundaries(session), tokens)
    hidden_bytes = sum(a.nbytes for arrays in cache.hidden.values() for a in arrays)
    print(f"driver: {len(session.layers)} layers, boundary cache {time.perf_counter() - started:.1f} s, "
          f"{hidden_bytes / 2**20:.0f} MiB of boundary arrays, RSS {process.memory_info().rss / 2**30:.2f} GiB")
    units = session.structural_ids()
    for index, (start, end) in enumerate(cache.boundaries[:args.layers]):
        kinds = [u.split(".", 1)[1] for u in units if u.startswith(f"layer{index}.")]
        sub = extract_submodel(model, [start], [end])
        job = LayerJob(shippable(sub), session.granularity, _sub_shapes(sub, cache, start), kinds, start, end)
        before = process.memory_info().rss
        began = time.perf_counter()
        scores = score_layer_job(job, cache.hidden[start], cache.hidden[end], cache.feeds, None)
        arrays = sum(a.nbytes for a in cache.hidden[start] + cache.hidden[end])
        print(f"layer {index}: {len(scores)} units in {time.perf_counter() - began:.1f} s; job {len(job.sub) / 2**20:.0f}"
              f" MiB sub-model + {arrays / 2**20:.0f} MiB boundary arrays; RSS growth "
              f"{(process.memory_info().rss - before) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
