#!/usr/bin/env python3
"""Compare pruned models of two code versions: model bytes without the plan metadata, and the plan's keys.

    python tools/compare_pruned.py DIR_A DIR_B NAME...   # DIR/NAME.onnx and DIR/NAME.plan.json in each

Prints, per NAME, whether the serialized models are identical once the `onnxdepth.plan` metadata entry is
taken out, whether every plan key of A has the same value in B, and which keys B adds (issue 13 checked the
refactor this way: YOLOv5s magnitude 0.3, SmolLM2 with-past magnitude 0.2, SmolLM2 angular 0.1).
"""
import json
import sys

import onnx


def strip(path):
    m = onnx.load(path, load_external_data=False)
    plan = next(json.loads(p.value) for p in m.metadata_props if p.key == "onnxdepth.plan")
    keep = [p for p in m.metadata_props if p.key != "onnxdepth.plan"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    return m.SerializeToString(), plan


for name in sys.argv[3:]:
    a, pa = strip(f"{sys.argv[1]}/{name}.onnx")
    b, pb = strip(f"{sys.argv[2]}/{name}.onnx")
    fa = json.load(open(f"{sys.argv[1]}/{name}.plan.json"))
    fb = json.load(open(f"{sys.argv[2]}/{name}.plan.json"))
    same_old = all(pb.get(k) == v for k, v in pa.items()) and all(fb.get(k) == v for k, v in fa.items())
    print(f"{name}: model bytes without the plan entry {'IDENTICAL' if a == b else 'DIFFER'} ({len(a):,} bytes); "
          f"every old plan key equal: {same_old}; new keys: {sorted(set(pb) - set(pa))}")
