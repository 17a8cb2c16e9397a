"""Build records of TensorRT engines and the check that an engine can run here (torch- and TensorRT-free).

A build record is a JSON file next to the engine (``<engine stem>.build.json``): TensorRT flavour and
version, the GPU (name, compute capability) or the target SMs, builder flags, precision strategy,
optimisation profile, the sha256 of the ONNX graphs and of the engine, and the build time.
:func:`compatibility_problems` compares a record with the running TensorRT and GPU; it is pure, so the
rules are tested without a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engines.errors import BundleError
from engines.fileio import write_atomic

__all__ = ["RECORD_SCHEMA", "BuildRecord", "compatibility_problems", "record_path", "write_json_atomic"]

RECORD_SCHEMA = 1


def record_path(engine_path: str | Path) -> Path:
    """The build record's path: ``model.fp16.sm86.engine`` -> ``model.fp16.sm86.build.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(f"{engine_path.stem}.build.json")


def write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as indented JSON to a temporary sibling, then rename it to ``path``."""
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class BuildRecord:
    """How an engine was built (see the module docstring); ``to_dict``/``from_dict`` give the JSON form.

    Attributes:
        engine_file: engine file name; ``engine_sha256`` / ``engine_size`` its checksum and size.
        onnx_file: the FP32 graph it comes from (the bundle's ``model.onnx``); ``onnx_sha256`` its checksum.
        network_onnx_file: the graph TensorRT parsed (the mixed-precision graph for FP16 strongly typed
            builds, else ``onnx_file``); ``network_onnx_sha256`` its checksum.
        tensorrt_flavour: ``tensorrt`` or ``tensorrt_rtx``; ``tensorrt_version`` its version.
        gpu: the build machine's GPU (``{name, compute_capability, source}``) or None (no GPU).
        target_sms: TensorRT-RTX compute capabilities built for (``["SM86"]``), ``[]`` for RTX's portable
            default; for TensorRT, the build GPU's SM.
        hardware_compatibility: TensorRT hardware compatibility level (``NONE``, ``AMPERE_PLUS``).
        version_compatible: built with ``BuilderFlag.VERSION_COMPATIBLE``.
        precision: ``fp16`` or ``fp32``; ``strategy``: ``strongly_typed`` or ``weak_typing``.
        builder_flags: the builder flags set at build time (read back from the config).
        profile: ``{input: {min, opt, max}}`` plus ``max_batch`` / ``opt_batch``.
        workspace_mb: workspace memory pool limit.
        timing_cache: ``{path, loaded, saved, note}``.
        fp32_scopes: scopes of the FP32 island; ``fp32_layers``: the layers pinned to FP32 (weak typing)
            or the island's node count by scope (strongly typed).
        build_seconds: wall time of the build; ``created``: ISO time.
    """

    engine_file: str
    engine_sha256: str
    engine_size: int
    onnx_file: str
    onnx_sha256: str
    network_onnx_file: str
    network_onnx_sha256: str
    tensorrt_flavour: str
    tensorrt_version: str
    gpu: dict[str, Any] | None
    target_sms: list[str]
    hardware_compatibility: str
    version_compatible: bool
    precision: str
    strategy: str
    builder_flags: list[str]
    profile: dict[str, Any]
    workspace_mb: int
    timing_cache: dict[str, Any]
    fp32_scopes: list[str]
    fp32_layers: Any
    build_seconds: float
    created: str
    schema: int = RECORD_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_batch(self) -> int:
        """Largest batch of the optimisation profile."""
        return int(self.profile["max_batch"])

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "build record") -> BuildRecord:
        """Read a record dict.

        Raises:
            BundleError: not an object, a newer schema, or a missing key.
        """
        if not isinstance(doc, Mapping):
            raise BundleError(f"{where}: not a JSON object: rebuild with masf-engine build")
        if doc.get("schema", RECORD_SCHEMA) != RECORD_SCHEMA:
            raise BundleError(
                f"{where}: schema {doc.get('schema')!r} is not {RECORD_SCHEMA}: rebuild the engine"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - {"schema", "extra"} if n not in doc)
        if missing:
            raise BundleError(f"{where}: missing {missing}: rebuild with masf-engine build")
        return cls(**{k: v for k, v in doc.items() if k in names})

    @classmethod
    def load(cls, path: str | Path) -> BuildRecord:
        """Read the record at ``path``.

        Raises:
            BundleError: missing, unreadable or invalid record.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"build record {path} is missing: rebuild with masf-engine build") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(
                f"build record {path} is corrupt ({type(err).__name__}): rebuild the engine"
            ) from None
        return cls.from_dict(doc, f"build record {path}")

    def save(self, path: str | Path) -> None:
        """Write the record to ``path`` atomically."""
        write_json_atomic(Path(path), self.to_dict())


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _parse_cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def compatibility_problems(
    record: BuildRecord,
    flavour: str,
    version: str,
    compute_capability: tuple[int, int] | None,
) -> list[str]:
    """Why the engine of ``record`` cannot run with this TensorRT and GPU (empty list: it can).

    Rules: the same flavour; the same TensorRT version, or for a version-compatible TensorRT engine the
    same major version and a runtime at least as new; a GPU; for TensorRT, the build GPU's compute
    capability (``AMPERE_PLUS``: any 8.0 or newer); for TensorRT-RTX, one of the target SMs (any for a
    portable engine).

    Args:
        record: the engine's build record.
        flavour: the running TensorRT flavour (``tensorrt`` or ``tensorrt_rtx``).
        version: the running TensorRT version.
        compute_capability: the running GPU's ``(major, minor)``, or None without a GPU.
    """
    problems = []
    if record.tensorrt_flavour != flavour:
        problems.append(f"built with {record.tensorrt_flavour}, this machine runs {flavour}")
    else:
        built, running = _version_tuple(record.tensorrt_version), _version_tuple(version)
        if record.version_compatible and flavour == "tensorrt":
            if built[:1] != running[:1] or running < built:
                problems.append(
                    f"version-compatible engine of TensorRT {record.tensorrt_version} needs TensorRT "
                    f"{built[0]}.x >= {record.tensorrt_version}, this machine runs {version}"
                )
        elif built != running:
            problems.append(f"built with {flavour} {record.tensorrt_version}, this machine runs {version}")
    if compute_capability is None:
        problems.append("no CUDA GPU found")
        return problems
    here = f"SM{compute_capability[0]}{compute_capability[1]}"
    if record.tensorrt_flavour == "tensorrt_rtx":
        if record.target_sms and here not in record.target_sms:
            problems.append(f"built for {', '.join(record.target_sms)}, this GPU is {here}")
        return problems
    level = record.hardware_compatibility
    built_cc = _parse_cc(record.gpu["compute_capability"]) if record.gpu else None
    if level == "AMPERE_PLUS":
        if compute_capability < (8, 0):
            problems.append(f"hardware-compatible (Ampere+) engine, this GPU is {here}")
    elif built_cc is None:
        problems.append("the build record names no GPU: rebuild on this machine")
    elif built_cc != compute_capability:
        problems.append(
            f"built on a GPU with compute capability {built_cc[0]}.{built_cc[1]}, this GPU is {here}"
        )
    return problems
