"""`onnxdepth heal`, and `prune --heal-steps`: the healing options as parsed arguments (`heal.HealConfig`)."""

from __future__ import annotations

import json
import sys
import time

__all__ = ["add_heal_options", "cmd_heal", "heal_after_prune", "heal_config_after_prune", "heal_config_of"]


def add_heal_options(p, *, steps_flag: str = "--steps") -> None:
    """The healing flags shared by `heal` and `prune --heal-steps` (STEPS_FLAG names the step count)."""
    if steps_flag == "--steps":
        p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (AdamW, warm-up then cosine; default 1e-4, 1e-3 with --lora-rank)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="LoRA adapters of rank R on every linear layer, merged into the weights at the end "
                        "(default 0: full fine-tuning)")
    p.add_argument("--eval-every", type=int, default=25,
                   help="held-out check every N steps; the best checkpoint is kept (default 25)")
    p.add_argument("--held-out", type=int, default=16, help="held-out windows (default 16)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes of training (the schedule follows the clock)")
    p.add_argument("--label-weight", type=float, default=0.0,
                   help="language models: add this weight x the next-token cross-entropy on the training text to "
                        "the KL (default 0: the KL alone)")
    p.add_argument("--heal-seed", type=int, default=0, help="seed of the data order, sampling and adapters")
    p.add_argument("--sampled", type=int, default=0, metavar="N",
                   help="language models: N windows sampled from the teacher (whole chats when its tokenizer has a "
                        "chat template); without --calib the whole data (default: up to 512), with it mixed in")
    p.add_argument("--grad-checkpoint", type=_segments, default=None, metavar="N|auto",
                   help="gradient checkpointing: recompute the forward pass in N segments during the backward one "
                        "(less activation memory for about one more forward pass; 0: off; default auto: on when "
                        "a step's activations, measured on one row, would not fit in the free memory)")
    p.add_argument("--heal-device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the student trains (default auto: CUDA when torch sees a GPU); the teacher runs in "
                        "ONNX Runtime")


def _segments(text: str) -> int | None:
    """--grad-checkpoint's value: None for auto, else the integer (checked by HealConfig)."""
    import argparse

    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be auto or a number of segments (0: off)") from None


def heal_config_of(args, steps: int):
    """The `heal.HealConfig` of ARGS (validated: a bad option is refused before any work)."""
    from ..heal import HealConfig

    return HealConfig(steps=steps, lr=args.lr, batch=args.batch, seq_len=args.seq_len, lora_rank=args.lora_rank,
                      eval_every=args.eval_every, held_out=args.held_out, max_minutes=args.max_minutes,
                      label_weight=args.label_weight, seed=args.heal_seed, calib=args.calib,
                      sampled=args.sampled, device=args.heal_device, checkpoint_segments=args.grad_checkpoint)


def _summary(out, record: dict, seconds: float) -> str:
    curve = record["held_out_curve"]
    first, best = curve[0], next((c for c in curve if c[0] == record["best_step"]), curve[0])
    how = {"steps": "", "max-minutes": ", stopped by --max-minutes", "interrupt": ", interrupted",
           "diverged": ", stopped: the loss diverged"}[record["stopped_by"]]
    return (f"{out}: healed {record['steps_done']} steps ({record['mode']}{how}) in {seconds:.0f}s; held-out loss "
            f"{first[2]:.4f} -> {best[2]:.4f}, {record['metric']} {_number(first[3])} -> {_number(best[3])} (best: step "
            f"{record['best_step']})")


def _number(value) -> str:
    return "inf" if value is None else f"{value:.2f}"


def cmd_heal(args) -> int:
    from ..heal import heal_file

    started = time.perf_counter()
    plan = heal_file(args.input, args.output, args.teacher, heal_config_of(args, args.steps),
                     resume=args.resume, progress=not args.json and sys.stderr.isatty())
    record = plan["healing"]
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if not k.endswith("_curve")}))
    else:
        print(_summary(args.output, record, time.perf_counter() - started))
    return 130 if record["interrupted"] else 0


def heal_config_after_prune(args):
    """`prune --heal-steps N`'s healing options (None without the flag), refused before any pruning."""
    if args.heal_steps is None:
        return None
    if args.heal_steps < 1:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"--heal-steps {args.heal_steps}: must be a positive integer")
    return heal_config_of(args, args.heal_steps)


def heal_after_prune(args, config) -> dict:
    """`prune ... --heal-steps N`: heal OUT in place against the unpruned input (CONFIG: `heal_config_of`);
    returns the run's summary (no curves)."""
    from ..heal import heal_file

    started = time.perf_counter()
    plan = heal_file(args.output, args.output, args.input, config, progress=not args.json and sys.stderr.isatty(),
                     in_place=True)
    record = plan["healing"]
    if not args.json:
        print(_summary(args.output, record, time.perf_counter() - started))
    return {k: v for k, v in record.items() if not k.endswith("_curve")}
