"""Fuzz `onnxdepth units` and `onnxdepth prune --ratio 0.3` with hostile models, for as long as asked.

    python tools/fuzz.py --cases 2000 --seed 0            # cases 0..1999 of every family, in turn
    python tools/fuzz.py --minutes 120 --jobs 2           # until two hours have passed
    python tools/fuzz.py --mode subprocess --cases 50     # fresh `python -m onnxdepth.cli` per command
    python tools/fuzz.py --families truncate,huge_dim --cases 200
    python tools/fuzz.py --replay                         # every case of tests/fuzz/corpus.txt
    python tools/fuzz.py --replay huge_dim-attn-2         # some of them, by name

Every failing case is added to tests/fuzz/corpus.txt (`<family>-<seed model>-<seed>` and a digest of its
bytes), which tests/fuzz/test_fuzz.py regenerates and replays. The families, the oracle and the child processes are in tests/fuzz/.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fuzz")]

import fuzz_cases  # noqa: E402
from fuzz_oracle import run_many  # noqa: E402


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, help="stop after N cases (default: unlimited with --minutes, else 500)")
    parser.add_argument("--minutes", type=float, help="stop after M minutes")
    parser.add_argument("--seed", type=int, default=0, help="index of the first case (runs are reproducible)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one command may take")
    parser.add_argument("--mode", choices=["fork", "subprocess"], default="fork",
                        help="fork: a child of this (already imported) process per command; subprocess: a fresh "
                             "interpreter, as a user runs it")
    parser.add_argument("--families", help="comma-separated families (default: all); --list shows them")
    parser.add_argument("--list", action="store_true", help="print the families and exit")
    parser.add_argument("--corpus", type=Path, default=fuzz_cases.CORPUS, help="the list failing cases are added to")
    parser.add_argument("--no-save", action="store_true", help="do not write failing cases")
    parser.add_argument("--replay", nargs="*", help="run these corpus cases (names; none: all of --corpus) instead of "
                                                   "generated cases")
    return parser.parse_args()


def _replayed(names: list[str], corpus: Path) -> list[fuzz_cases.Case]:
    cases = fuzz_cases.corpus_cases(corpus)
    return [case for case in cases if case.name in names] if names else cases


def main() -> int:
    args = _arguments()
    if args.list:
        for name, family in sorted(fuzz_cases.FAMILIES.items()):
            print(f"{name:22} {(family.__doc__ or '').strip().splitlines()[0] if family.__doc__ else ''}")
        return 0
    families = args.families.split(",") if args.families else None
    unknown = set(families or []) - set(fuzz_cases.FAMILIES)
    if unknown:
        sys.exit(f"unknown families: {', '.join(sorted(unknown))} (see --list)")
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    limit = args.cases if args.cases is not None else (None if deadline else 500)
    if args.replay is not None:
        cases = iter(_replayed(args.replay, args.corpus))
    else:
        cases = fuzz_cases.sequence(args.seed, families)
    if limit is not None:
        cases = itertools.islice(cases, limit)
    cases = itertools.takewhile(lambda _: deadline is None or time.monotonic() < deadline, cases)
    runs, failed = collections.Counter(), collections.Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxdepth-fuzz-") as work:
        for case, failures, seconds in run_many(cases, Path(work), jobs=args.jobs, timeout=args.timeout,
                                                mode=args.mode):
            family = case.name.split("-", 1)[0]
            runs[family] += 1
            if failures:
                failed[family] += 1
                where = "" if args.no_save or args.replay is not None else f" -> {fuzz_cases.save_case(case, args.corpus)}"
                print(f"FAIL {case.name} ({seconds:.1f} s){where}", flush=True)
                for failure in failures:
                    print(f"     {failure}", flush=True)
            total = sum(runs.values())
            if total % 100 == 0:
                print(f"... {total} cases, {sum(failed.values())} failing, {time.perf_counter() - started:.0f} s",
                      flush=True)
    elapsed = time.perf_counter() - started
    print(f"{sum(runs.values())} cases in {elapsed:.1f} s ({args.mode}, {args.jobs} jobs): "
          f"{sum(failed.values())} failing")
    for family in sorted(runs):
        print(f"  {family:22} {runs[family]:6} run {failed[family]:5} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
