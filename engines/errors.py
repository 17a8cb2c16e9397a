"""User-facing errors of the engines package (torch-free).

Every error a user can cause (a bundle that is missing, corrupt, changed or too new; an input of the wrong
size or dtype; a backend that is not installed) is an :class:`EngineError` with a one-line message that
says what is wrong and what to do. ``masf-engine`` prints ``error: <message>`` and exits with status 2.
The edge daemon imports this module, so it must never import torch or the trainer.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BuildError",
    "BundleError",
    "ConfigError",
    "EngineError",
    "ExportError",
    "InputError",
    "ParityError",
]


class EngineError(Exception):
    """A problem the user can fix; ``str(err)`` is a complete one-line message."""


class ConfigError(EngineError):
    """Invalid configuration value; the message names the file and the dotted field."""


class BundleError(EngineError):
    """Missing, corrupt, changed or unsupported model bundle."""


class ExportError(EngineError):
    """The model cannot be exported (unsupported option, exporter failure, unsupported ops)."""


class ParityError(ExportError):
    """The exported graph does not reproduce the PyTorch reference within the tolerances."""


class BackendError(EngineError):
    """Unknown or unavailable inference backend (nothing falls back silently)."""


class BuildError(EngineError):
    """A TensorRT engine cannot be built (missing or corrupt ONNX, parser errors, unsupported option)."""


class InputError(EngineError, ValueError):
    """An input image or batch of the wrong type, dtype, size or channel count."""
