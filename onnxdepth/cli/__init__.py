"""Command line: onnxdepth units | prune | score | eval | bench | sweep | report | demo | export.

Every failure is one line on stderr and a non-zero exit (1, 3 for an unreachable ratio, 124 past --timeout); -v adds the
cause chain, and for an internal error the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from ..errors import OnnxDepthError, RatioUnreachableError
from .parser import build_parser

__all__ = ["EXIT_ERROR", "EXIT_TIMEOUT", "EXIT_UNREACHABLE", "build_parser", "main"]

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 124  # as coreutils' timeout


def _print_causes(exc: BaseException) -> None:
    """-v: the chain of exceptions behind a typed error (`raise ... from cause`), innermost last."""
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:  # a chain can loop back on itself
        seen.add(id(cause))
        print(f"  caused by {type(cause).__name__}: {cause}", file=sys.stderr)
        cause = cause.__cause__ or cause.__context__


def _arm_timeout(seconds: float | None, parser):
    """--timeout: a watchdog thread that, once SECONDS have passed, removes this process's temporaries, says so
    and ends the process with EXIT_TIMEOUT. It never interrupts a commit (the renames of a finished output
    hold `fileio.COMMIT`), and it raises nothing into the main thread, which may be inside native code (an
    exception raised there by a signal handler can abort the interpreter)."""
    if seconds is None:
        return None
    if not seconds > 0:
        parser.error(f"--timeout {seconds:g}: must be positive")
    from ..fileio import COMMIT, remove_temporaries

    def expire() -> None:
        with COMMIT:
            remove_temporaries()
            sys.stderr.write(f"onnxdepth: error: --timeout {seconds:g}: stopped after {seconds:g} s; no output "
                             "written\n")
            sys.stderr.flush()
            os._exit(EXIT_TIMEOUT)

    watchdog = threading.Timer(seconds, expire)
    watchdog.daemon = True
    watchdog.start()
    return watchdog


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    watchdog = _arm_timeout(args.timeout, parser)
    try:
        return args.func(args)
    except OnnxDepthError as exc:
        print(f"onnxdepth: error: {exc}", file=sys.stderr)
        if args.verbose:
            _print_causes(exc)
        return EXIT_UNREACHABLE if isinstance(exc, RatioUnreachableError) else EXIT_ERROR
    except KeyboardInterrupt:
        print("onnxdepth: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line (rerun with -v for the traceback), never a partial file
        if args.verbose:
            raise
        print(f"onnxdepth: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if watchdog is not None:
            watchdog.cancel()
