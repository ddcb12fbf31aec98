"""Command line: onnxdepth units | prune | score | eval | bench | sweep | report | demo | export.

Every failure is one line on stderr and a non-zero exit (1, 3 for an unreachable ratio, 124 past --timeout, 130 after
Ctrl-C / SIGINT, 143 after SIGTERM, 141 when stdout's reader has gone); -v adds the cause chain, and for an internal error the traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ..errors import OnnxDepthError, RatioUnreachableError
from .parser import build_parser

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_TIMEOUT", "EXIT_UNREACHABLE", "Terminated",
           "build_parser", "main"]

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 124  # as coreutils' timeout
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt, so that every `finally` on the way out removes its
    temporaries exactly as after Ctrl-C."""


def _on_signal(signum, frame) -> None:
    """SIGINT / SIGTERM: kept for later while a commit renames files (`fileio.defer_signal`); else ignore
    further ones (a second Ctrl-C must not cut the clean-up short), then raise. Python runs this between
    bytecodes of the main thread, never inside native code."""
    from ..fileio import defer_signal

    if defer_signal(signum):
        return
    _RECEIVED.append(signum)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


#: The signals `_on_signal` acted on in this `main` call: an exception after one is its consequence (an
#: extension module whose import it cut short raises "ImportError: initialization failed"), not a bug.
_RECEIVED: list[int] = []


def _interrupted(terminated: bool) -> int:
    from ..fileio import remove_temporaries

    remove_temporaries()  # the `finally` blocks did; this also catches one made just as the signal came
    print(f"onnxdepth: {'terminated' if terminated else 'interrupted'}; nothing partial written", file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _install_signal_handlers() -> dict | None:
    """_on_signal for SIGINT and SIGTERM (the main thread only can); the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _ort_status_error(exc: BaseException) -> bool:
    """EXC is ONNX Runtime refusing a model it was asked to run (its pybind11 status types: Fail,
    InvalidArgument, ...), not a bug of ours. Looked up only when ONNX Runtime is loaded at all."""
    state = sys.modules.get("onnxruntime.capi.onnxruntime_pybind11_state")
    return state is not None and type(exc).__module__ == state.__name__


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
    _RECEIVED.clear()
    handlers = _install_signal_handlers()
    try:
        return args.func(args)
    except OnnxDepthError as exc:
        if _RECEIVED:  # a typed error wrapping what the signal cut short
            return _interrupted(_RECEIVED[0] == signal.SIGTERM)
        print(f"onnxdepth: error: {exc}", file=sys.stderr)
        if args.verbose:
            _print_causes(exc)
        return EXIT_UNREACHABLE if isinstance(exc, RatioUnreachableError) else EXIT_ERROR
    except KeyboardInterrupt as exc:
        return _interrupted(isinstance(exc, Terminated))
    except BrokenPipeError:  # stdout piped into `head` that has exited: stop quietly, as `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot raise again
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: still one line (rerun with -v for the traceback), never a partial file
        if _RECEIVED:  # raised because a signal's exception cut something short
            return _interrupted(_RECEIVED[0] == signal.SIGTERM)
        if _ort_status_error(exc):
            # ONNX Runtime cannot run the input model itself (a Conv whose weight does not fit its input, a
            # zero-size input): the model's fault, found where the importance first runs it.
            from ..runtime import first_line

            print(f"onnxdepth: error: ONNX Runtime cannot run the model: {first_line(exc, 500)}", file=sys.stderr)
            if args.verbose:
                _print_causes(exc)
            return EXIT_ERROR
        if args.verbose:
            raise
        print(f"onnxdepth: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for sig, handler in (handlers or {}).items():
            signal.signal(sig, handler)
