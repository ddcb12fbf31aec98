"""Command line: onnxdepth units | prune | score | eval | bench | sweep | report | demo | export.

Every failure is one line on stderr and a non-zero exit (1, 3 for an unreachable ratio, 124 past --timeout); -v adds the
cause chain, and for an internal error the traceback.
"""

from __future__ import annotations

import logging
import signal
import sys

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


class Expired(BaseException):
    """--timeout passed. A BaseException, so that no `except Exception` on the way turns it into another error."""


def _arm_timeout(seconds: float | None, parser) -> None:
    """--timeout: raise Expired in the main thread once SECONDS have passed (a pending ONNX Runtime call
    finishes first). The atomic writers remove their temporaries on the way out."""
    if seconds is None:
        return
    if not seconds > 0:
        parser.error(f"--timeout {seconds:g}: must be positive")

    def expire(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise Expired(f"--timeout {seconds:g}: stopped after {seconds:g} s; no output written")

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        _arm_timeout(args.timeout, parser)
        return args.func(args)
    except OnnxDepthError as exc:
        print(f"onnxdepth: error: {exc}", file=sys.stderr)
        if args.verbose:
            _print_causes(exc)
        return EXIT_UNREACHABLE if isinstance(exc, RatioUnreachableError) else EXIT_ERROR
    except Expired as exc:
        print(f"onnxdepth: error: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        print("onnxdepth: interrupted; no output written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line (rerun with -v for the traceback), never a partial file
        if args.verbose:
            raise
        print(f"onnxdepth: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if args.timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
