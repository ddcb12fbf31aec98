"""Figure 4.7 analogue: WikiText-2 test perplexity of SmolLM2-135M with one transformer layer (or one
attention / MLP sub-block) pruned at a time, against the unpruned model.

    python tools/figure47.py [--model DIR/model.onnx] [--units block] [--max-tokens 8192]
        [--work-dir artifacts/figure47]

--units: block (whole layers), sublayer (attention and MLP of every layer) or fine (attention, gate,
up, down). Results go to WORK_DIR/figure47.csv (resumable: finished units are skipped) and
WORK_DIR/figure47.png (perplexity increase per layer, log scale).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from onnxdepth.api import replay_plan
from onnxdepth.eval import evaluate_perplexity
from onnxdepth.graph.io import load_model, save_model_atomic
from onnxdepth.prune.session import PruneSession

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "test.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/out/smollm2-135m/model.onnx"))
    parser.add_argument("--units", default="block", choices=["block", "sublayer", "fine"])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/figure47"))
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.model.exists():
        from onnxdepth.models_zoo import ensure_export

        args.model = ensure_export("smollm2-135m", "text-generation", args.model.parent)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    table = args.work_dir / f"figure47_{args.units}.csv"
    done: dict[str, float] = {}
    if table.exists():
        with table.open() as handle:
            done = {row["unit"]: float(row["perplexity"]) for row in csv.DictReader(handle)}
    else:
        table.write_text("unit,perplexity\n")
    model = load_model(args.model)
    unit_ids = ["none"] + PruneSession(model, granularity=args.units).structural_ids()

    def measure(path: Path) -> float:
        return evaluate_perplexity(path, DATA, tokenizer_dir=args.model.parent, ctx=512, max_tokens=args.max_tokens,
                                   progress=False)["perplexity"]

    for unit_id in unit_ids:
        if unit_id in done:
            continue
        t0 = time.perf_counter()
        if unit_id == "none":
            value = measure(args.model)
        else:
            result = replay_plan(model, {"granularity": args.units, "steps": [{"unit": unit_id}]})
            with tempfile.TemporaryDirectory() as tmp:
                path = save_model_atomic(result.model, Path(tmp) / "model.onnx")
                value = measure(path)
        done[unit_id] = value
        with table.open("a") as handle:
            handle.write(f"{unit_id},{value:.6g}\n")
        print(f"{unit_id}: perplexity {value:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = done["none"]
    _plot(done, base, args.units, args.work_dir / f"figure47_{args.units}.png")
    worst = max((u for u in done if u != "none"), key=lambda u: done[u])
    best = min((u for u in done if u != "none"), key=lambda u: done[u])
    print(f"unpruned {base:.2f}; least harmful {best} ({done[best]:.2f}), most harmful {worst} ({done[worst]:.2f})")
    print(f"wrote {table} and {table.with_suffix('.png')} ({time.perf_counter() - started:.0f} s)")
    return 0


def _plot(values: dict[str, float], base: float, units: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({u.split(".", 1)[1] for u in values if u != "none"})
    layers = sorted({int(u.split(".")[0].removeprefix("layer")) for u in values if u != "none"})
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(kinds), 1)
    for k, kind in enumerate(kinds):
        xs = [l + (k - (len(kinds) - 1) / 2) * width for l in layers if f"layer{l}.{kind}" in values]
        # Perplexity increase as a ratio to the unpruned model, on a log axis (from 1x upwards).
        ys = [values[f"layer{l}.{kind}"] / base for l in layers if f"layer{l}.{kind}" in values]
        ax.bar(xs, ys, width=width, label=kind, bottom=0)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("perplexity / unpruned")
    ax.set_title(f"SmolLM2-135M: one {units} unit pruned at a time (unpruned perplexity {base:.2f})")
    if len(kinds) > 1:
        ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


if __name__ == "__main__":
    sys.exit(main())
