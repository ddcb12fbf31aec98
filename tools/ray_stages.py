"""Cross-entropy scores on Ray stages against one process, side by side: wall time, equality, and each stage
worker's peak memory against the whole model's (`importance.chain_stages`).

    python tools/ray_stages.py models/out/smollm2-135m-with-past/model.onnx --workers 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--granularity", default="block")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--calib", default="../shared/data/wikitext-2/valid.txt")
    args = parser.parse_args()

    from onnxdepth.config import Calibration
    from onnxdepth.distributed import RayPool
    from onnxdepth.graph.io import load_model
    from onnxdepth.importance import chain_stages
    from onnxdepth.importance.cross_entropy import cross_entropy_scores
    from onnxdepth.prune.session import PruneSession

    model = load_model(args.model)
    session = PruneSession(model, granularity=args.granularity)
    tokens = Calibration(args.calib, args.sequences, args.length).for_model(args.model).tokens()
    import psutil

    started = time.perf_counter()
    single = cross_entropy_scores(model, session, tokens, progress=False)
    single_s = time.perf_counter() - started
    full = psutil.Process().memory_full_info()
    print(f"one process: {single_s:.1f} s, USS {full.uss / 2**20:.0f} MiB after it", flush=True)

    class Recording(RayPool):
        """Keeps the stage actors so their memory can be asked for afterwards."""
        actors: list = []

        def actor(self, cls, *rest):
            handle = super().actor(cls, *rest)
            self.actors.append(handle)
            return handle

    with Recording(args.workers, None) as pool:
        started = time.perf_counter()
        pooled = chain_stages.pipelined_cross_entropy_scores(model, session, tokens, pool)
        pooled_s = time.perf_counter() - started
        memories = pool.get([actor.memory.remote() for actor in pool.actors])
        ranges = chain_stages.stage_ranges(len(session.layers), pool.cpus())
    weights = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
    print(f"{len(single)} units, {args.sequences} x {args.length} tokens, {args.granularity}")
    print(f"one process: {single_s:.1f} s; {len(ranges)} stages: {pooled_s:.1f} s; equal: {pooled == single}")
    print(f"model weights: {weights / 2**20:.0f} MiB (fp32 count)")
    for (first, last), memory in zip(ranges, memories):
        print(f"stage layers {first}-{last - 1}: worker USS {memory['uss'] / 2**20:.0f} MiB, PSS "
              f"{memory['pss'] / 2**20:.0f} MiB, peak RSS {memory['peak_rss'] / 2**20:.0f} MiB (counts each mapping "
              "of the shared weights file)")


if __name__ == "__main__":
    main()
