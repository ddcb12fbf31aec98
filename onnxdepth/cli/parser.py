"""The argument parser of `onnxdepth`: one subparser per command, choices read from the option constants."""

from __future__ import annotations

import argparse

from .. import __version__
from ..config import BLOCK_CHOICES, COMPENSATIONS, GRANULARITIES, HEADS, OBJECTIVES, ORDERINGS, RANKINGS, SEARCH_SPACES
from .commands import (_cmd_bench, _cmd_demo, _cmd_eval, _cmd_export, _cmd_prune, _cmd_report, _cmd_score, _cmd_sweep, _cmd_units)
from .heal_command import add_heal_options, cmd_heal

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from ..eval import tasks
    from ..eval.multiple_choice import SCORINGS
    from ..eval.ocr import OCR_KINDS
    from ..export.hf import TASKS as HF_TASKS
    from ..runtime import DEVICES

    # What `auto` (the prune default) resolves to (onnxdepth.defaults).
    AUTO_HELP = ("; auto (default): with --calib on a pre-norm transformer, whole layers by the damage left "
                 "after a least-squares fit, with the fit (block, angular, lstsq); otherwise magnitude, fine, none")
    parser = argparse.ArgumentParser(prog="onnxdepth", description="Fine-grained depth pruning of ONNX models.")
    parser.add_argument("--version", action="version", version=f"onnxdepth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop after SECONDS with exit code 124 and nothing written (for pipelines)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, auto: bool = False):
        p.add_argument("--exclude", metavar="REGEX", help="exclude units whose id (node name) matches REGEX")
        p.add_argument("--granularity", default="auto" if auto else "fine",
                       choices=(*GRANULARITIES, "auto") if auto else GRANULARITIES,
                       help="transformers: attention + MLP sub-layers (fine, Algorithm 8), attention + MLP "
                            "(sublayer), whole layers (block)" + (AUTO_HELP if auto else ""))
        p.add_argument("--search-space", default="full", choices=SEARCH_SPACES,
                       help="CNNs: every unit (full) or only units that keep the channel count (reduced, the "
                            "thesis's baseline)")
        p.add_argument("--input-shape", action="append", metavar="NAME:DxD",
                       help="concrete shape for a dynamic graph input (repeatable)")
        p.add_argument("--head", default="branches", choices=HEADS,
                       help="graph head kept out of pruning: each output's last transform and the chains of "
                            "transforms behind it up to a fork of the trunk (branches, default: YOLOv8's Detect "
                            "cv2/cv3 stacks), or only each output's last transform (last)")

    def latency(p):
        p.add_argument("--objective", default="params", choices=OBJECTIVES,
                       help="rank units by importance (params, default) or by importance per millisecond saved on "
                            "ONNX Runtime's profile of the model (latency; profile cached beside the model)")
        p.add_argument("--latency-ratio", type=float, default=None, metavar="R",
                       help="instead of --ratio: remove R of the profiled latency (kernel time)")
        p.add_argument("--device", default="cpu", choices=DEVICES, help="provider the latency profile and --bench run on")
        p.add_argument("--profile-threads", type=int, default=1,
                       help="intra-op threads of the latency profile (default 1)")
        p.add_argument("--profile-runs", type=int, default=10,
                       help="profiled runs; each node's time is their median (default 10)")

    def calibration(p):
        p.add_argument("--calib", help="calibration data: text models .txt, .jsonl (text field) or .npz "
                                       "(input_ids), default text sampled from the model itself (seeded); image "
                                       "models a folder of images or .npz (images), default packaged photos")
        p.add_argument("--calib-sequences", type=int, default=32, help="calibration sequences (default 32)")
        p.add_argument("--calib-length", type=int, default=128, help="tokens per sequence (default 128)")

    def distribution(p):
        p.add_argument("--workers", type=int, default=None, metavar="N",
                       help="score layers as jobs on a local Ray runtime with N worker CPUs (angular and "
                            "cross_entropy importance, and the least-squares damages of the default; "
                            "pip install 'onnxdepth[ray]')")
        p.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="score layers on the existing Ray cluster at ADDR (e.g. ray://head:10001 or auto)")

    p = sub.add_parser("units", help="list pruning units and why some are excluded")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=_cmd_units)

    p = sub.add_parser("prune", help="remove RATIO of the parameters by deleting whole layers")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--ratio", type=float, default=None, help="target parameter reduction in [0, 1) (or --latency-ratio)")
    p.add_argument("--plan", help="replay a saved plan (OUT.plan.json) exactly instead of selecting units")
    p.add_argument("--max-drop", type=float, default=None, metavar="D",
                   help="prune as far as possible (up to --ratio, default 0.5) while the held-out fidelity drops "
                        "by at most D (0.05: at most 5%% top-1 disagreement or mAP50 loss); one selection run and "
                        "a bisection over its prefixes")
    p.add_argument("--bench", action="store_true",
                   help="end with a quick interleaved latency comparison (pruned / unpruned) on --device")
    p.add_argument("--threads", type=int, default=None, help="--bench: ONNX Runtime threads")
    p.add_argument("--importance", default="auto",
                   help="magnitude, angular, cross_entropy or taylor" + AUTO_HELP)
    p.add_argument("--ordering", default="ascending", choices=ORDERINGS,
                   help="visit units by ascending score (the method), descending or random (ablations)")
    p.add_argument("--seed", type=int, default=0, help="seed for --ordering random and sampled calibration")
    p.add_argument("--scores", help="reuse a score table from `onnxdepth score` (CSV unit,score)")
    p.add_argument("--rescore-every", type=int, default=None, metavar="N",
                   help="re-estimate angular or cross_entropy importance on the model pruned so far after every "
                        "N pruned units (fine granularity; cross_entropy makes it a greedy search; on a CNN with "
                        "--importance angular: the graph outputs re-measured with the nearest Convs refitted)")
    p.add_argument("--shortlist", type=int, default=None, metavar="K",
                   help="with --rescore-every: after the first round, re-score only the K best moves of the "
                        "previous round (a lazy greedy search; default: re-score all)")
    p.add_argument("--ranking", default="split", choices=RANKINGS,
                   help="transformers: separate attention/MLP rankings (Algorithm 8's 2:1, default); one "
                        "global ranking by importance per parameter removed; or grouped: single units, whole "
                        "MLPs and whole layers on one ranking by the damage each adds per parameter removed "
                        "(angular or cross_entropy, fine granularity)")
    p.add_argument("--compensate", default="auto", choices=COMPENSATIONS,
                   help="reconstruction after pruning: lstsq refits the surviving writer before each removed run of "
                        "attention blocks / MLPs / layers by least squares on the calibration data and folds the "
                        "fit into its weights (no new parameters); in a post-norm encoder (BERT) it refits every "
                        "surviving projection and LayerNorm after the first pruned layer instead; in a CNN, the "
                        "surviving Convs whose input changed; none" + AUTO_HELP)
    p.add_argument("--block-choice", default="gromov", choices=BLOCK_CHOICES,
                   help="--granularity block with angular importance: Gromov et al.'s most similar contiguous "
                        "run of layers (default) or a plain ranking of single layers")
    calibration(p)
    distribution(p)
    latency(p)
    p.add_argument("--heal-steps", type=int, default=None, metavar="N",
                   help="then heal OUT for N steps against the unpruned input (as `onnxdepth heal`, its options "
                        "below; text from --calib, else sampled from the input)")
    add_heal_options(p, steps_flag="--heal-steps")
    p.add_argument("--json", action="store_true")
    common(p, auto=True)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("heal", help="distil a pruned model from the unpruned one (KL to its next-token "
                                    "distribution) and write the trained weights back into the same graph")
    p.add_argument("input", help="the pruned model")
    p.add_argument("output")
    p.add_argument("--teacher", required=True, help="the unpruned model")
    p.add_argument("--calib", help="training text (.txt / .jsonl, or .npz input_ids); default: text sampled from "
                                   "the teacher (seeded)")
    add_heal_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT's checkpoint (OUT.heal.pt, kept when a run is interrupted or stopped "
                        "by --max-minutes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_heal)

    p = sub.add_parser("eval", help="evaluate a model through ONNX Runtime")
    p.add_argument("model")
    p.add_argument("--task", required=True, choices=tasks.task_names())
    p.add_argument("--text", help="perplexity: a text file (WikiText-2 format); embedding: lines to embed "
                                  "(the first --samples non-empty ones; default: built-in sentences)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: beside the model)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens")
    p.add_argument("--stride", type=int, default=None, help="sliding windows (default: non-overlapping)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--reference", help="detection: the unpruned model, whose detections are the ground truth; "
                                       "embedding, fidelity: the unpruned model, compared with")
    p.add_argument("--images", type=int, default=24, help="detection: images from the packaged photos")
    p.add_argument("--imgsz", type=int, default=320, help="detection: letterbox size")
    p.add_argument("--image-dir", help="detection: a folder of images to score against labels")
    p.add_argument("--labels", help="detection: YOLO txt folder (default: the image folder) or a COCO .json")
    p.add_argument("--samples", type=int, default=None,
                   help="ocr: rendered lines (rec, default 200) or pages (det, default 50); embedding: lines "
                        "(default 200)")
    p.add_argument("--seed", type=int, default=None,
                   help="ocr: seed of the rendered text (default 0); fidelity: calibration seed (default: the plan's)")
    p.add_argument("--calib", help="fidelity: calibration data the prune drew from (default: the plan's)")
    p.add_argument("--calib-sequences", type=int, default=None, help="fidelity: default the plan's")
    p.add_argument("--calib-length", type=int, default=None, help="fidelity: default the plan's")
    p.add_argument("--ocr-kind", choices=OCR_KINDS, default=None,
                   help="ocr: recognizer or detector (default: from the output shape)")
    p.add_argument("--data", help="multiple-choice: an MMLU CSV file or a folder of them (no header)")
    p.add_argument("--dev", help="multiple-choice: few-shot examples folder (default: 'dev' beside the data folder)")
    p.add_argument("--shots", type=int, default=0, help="multiple-choice: few-shot examples per question")
    p.add_argument("--scoring", default="both", choices=SCORINGS,
                   help="multiple-choice: answer letters (MMLU), answer texts (cloze, length-normalised) or both")
    p.add_argument("--limit", type=int, default=None, help="multiple-choice: first N questions only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("bench", help="ONNX Runtime latency of models side by side (interleaved runs)")
    p.add_argument("models", nargs="+")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="cuda: CUDA execution provider (onnxruntime-gpu) with IO binding")
    p.add_argument("--input-shape", action="append", metavar="NAME:DxD",
                   help="concrete shape for a dynamic graph input (repeatable)")
    p.add_argument("--data", help="a dataset .npz (arrays named like the inputs, or input_ids, or images) "
                                  "instead of random inputs")
    p.add_argument("--batch-size", type=int, default=1, help="--data: rows per batch (default 1)")
    p.add_argument("--batches", type=int, default=1, help="random inputs: batches per timed pass (default 1)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", help="also write an HTML table here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("sweep", help="prune at many ratios and granularities; evaluate, time and report every point")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="sweep directory: points.jsonl/csv, plots, report, models/ (rerun to resume)")
    p.add_argument("--ratios", default="0:0.48:0.06",
                   help="START:STOP:STEP (STOP included) or a comma list (default 0:0.48:0.06)")
    p.add_argument("--granularity", default="fine",
                   help="transformers: comma list of fine, sublayer, block (one method each); ignored for CNNs")
    p.add_argument("--search-space", default=None, metavar="SPACES",
                   help="CNNs: comma list of full, reduced (one method each; default full)")
    p.add_argument("--eval", required=True, metavar="TASKS",
                   help=f"comma list of tasks ({', '.join(tasks.task_names())}) or none (latency only)")
    p.add_argument("--importance", default="magnitude", help="importance metric (default: magnitude)")
    p.add_argument("--exclude", metavar="REGEX", help="exclude units whose id (node name) matches REGEX")
    p.add_argument("--input-shape", action="append", metavar="NAME:DxD",
                   help="concrete shape for a dynamic graph input (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampled calibration")
    calibration(p)
    p.add_argument("--text", help="perplexity: a text file (WikiText-2 format)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: beside the unpruned model)")
    p.add_argument("--ctx", type=int, default=None, help="perplexity: window length in tokens (default 512)")
    p.add_argument("--stride", type=int, default=None, help="perplexity: sliding windows")
    p.add_argument("--max-tokens", type=int, default=None, help="perplexity: first N tokens only")
    p.add_argument("--data", help="multiple-choice and other data-driven tasks: data file or folder")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--images", type=int, default=None, help="detection: images from the packaged photos (24)")
    p.add_argument("--imgsz", type=int, default=None, help="detection: letterbox size (320)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any other evaluator option, e.g. shots=5 (repeatable)")
    p.add_argument("--bench-runs", type=int, default=10, help="latency runs per point, interleaved (default 10)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for evaluation and latency")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="one self-contained HTML report (+ Markdown) of sweeps, bench JSON and "
                                      "pruned models")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="sweep directories, bench .json files (bench --json), pruned .onnx models or plan .json")
    p.add_argument("-o", "--output", default="report.html", help="HTML file; OUTPUT.md and the PNGs go beside it")
    p.add_argument("--title", default="onnxdepth report")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="main job: build SmolLM2 ONNX from the packaged weights, prune it, compare")
    p.add_argument("--ratio", type=float, default=0.1,
                   help="parameter reduction (default 0.1: the largest at which the default prune still answers "
                        "the demo's question correctly without calibration data)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None,
                   help="WikiText-2 folder (valid.txt calibrates, test.txt for perplexity; default "
                        "../shared/data/wikitext-2, skipped when missing)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("score", help="importance of every unit, as a CSV score table (lowest first)")
    p.add_argument("model")
    p.add_argument("--importance", default="magnitude", help="magnitude, angular, cross_entropy or taylor")
    p.add_argument("-o", "--output", help="write the CSV here (default: stdout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compensate", default="none", choices=("none", "lstsq"),
                   help="lstsq: also each row's damage left after its least-squares fit (column after_fit; block "
                        "granularity, angular importance)")
    common(p)
    calibration(p)
    distribution(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("export", help="export a framework model to ONNX")
    p.add_argument("source", choices=["ultralytics", "hf"], help="exporter")
    p.add_argument("src", help="ultralytics: bundled yaml (yolov5s.yaml) or .pt; hf: model directory or .gguf. "
                               "A .pt checkpoint is unpickled by ultralytics (torch.load without weights_only: it "
                               "stores whole modules), which can run code from the file: export only checkpoints "
                               "you trust")
    p.add_argument("out", help="ultralytics: output .onnx; hf: output directory (model.onnx + tokenizer/config)")
    p.add_argument("--imgsz", type=int, default=640, help="ultralytics: image size")
    p.add_argument("--task", default="text-generation",
                   choices=HF_TASKS,
                   help="hf: export task")
    p.add_argument("--overwrite", action="store_true", help="hf: replace an existing model.onnx in OUT")
    p.add_argument("--opset", type=int, default=None)
    p.set_defaults(func=_cmd_export)
    return parser


