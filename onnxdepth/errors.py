"""Typed errors. Every error the CLI reports is one of these; the message names the thing at fault."""

from __future__ import annotations

__all__ = [
    "OnnxDepthError",
    "InvalidArgumentError",
    "ModelLoadError",
    "UnsupportedModelError",
    "RatioUnreachableError",
    "VerificationError",
    "ExportError",
    "OutputWriteError",
]


class OnnxDepthError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""


class InvalidArgumentError(OnnxDepthError):
    """A command-line or API argument is out of range or inconsistent."""


class ModelLoadError(OnnxDepthError):
    """The input file is missing, not ONNX, truncated, or its external data is missing."""


class UnsupportedModelError(OnnxDepthError):
    """The model uses a construct onnxdepth refuses to rewrite."""


class RatioUnreachableError(OnnxDepthError):
    """The requested parameter reduction cannot be reached with the prunable units."""

    def __init__(self, message: str, reachable: float):
        super().__init__(message)
        self.reachable = reachable


class VerificationError(OnnxDepthError):
    """An emitted model failed the checker, ONNX Runtime, or the input/output signature check."""


class ExportError(OnnxDepthError):
    """Exporting a framework model to ONNX failed."""


class OutputWriteError(OnnxDepthError):
    """The output path cannot be written."""
