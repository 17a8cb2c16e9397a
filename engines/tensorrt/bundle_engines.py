"""TensorRT engines inside a bundle: build one into it, and pick the one that runs on this machine.

``masf-engine build`` calls :func:`build_bundle_engine`: the engine is built from the bundle's
``model.onnx`` into a temporary directory, then the engine, its build record (``*.build.json``) and, for
FP16, the mixed-precision graph ``model.fp16.onnx`` are added to the bundle with
:func:`engines.bundle.update_bundle` (atomic, every file with its sha256 in the manifest), and the
manifest's ``engines`` list gets an entry (an engine of the same name is replaced). Engine names say what
they are: ``model.<precision>.<target>.engine``, target ``sm86`` (the SM it was built for/on),
``rtx`` (TensorRT-RTX portable) or ``ampere-plus`` (TensorRT hardware compatibility).

:func:`select_engine` finds the first engine of the bundle whose build record is compatible with the
running TensorRT and GPU (:func:`~engines.tensorrt.record.compatibility_problems`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from engines.bundle import Bundle, update_bundle
from engines.errors import BundleError
from engines.tensorrt.builder import build_engine
from engines.tensorrt.record import BuildRecord, compatibility_problems, record_path

__all__ = ["build_bundle_engine", "engine_name", "select_engine"]


def engine_name(record: BuildRecord) -> str:
    """Bundle file name of an engine: ``model.<precision>.<target>.engine``."""
    if record.tensorrt_flavour == "tensorrt_rtx":
        target = "-".join(sm.lower() for sm in record.target_sms) or "rtx"
    elif record.hardware_compatibility == "AMPERE_PLUS":
        target = "ampere-plus"
    else:
        target = "-".join(sm.lower() for sm in record.target_sms) or "gpu"
    return f"model.{record.precision}.{target}.engine"


def build_bundle_engine(
    bundle_path: str | Path, precision: str = "fp16", max_batch: int = 8, **options: Any
) -> tuple[Bundle, BuildRecord]:
    """Build an engine from the bundle's graph and add it to the bundle.

    Args:
        bundle_path: the bundle directory (verified first).
        precision: ``"fp16"`` or ``"fp32"``.
        max_batch: largest batch of the optimisation profile.
        **options: further :func:`~engines.tensorrt.builder.build_engine` arguments (``opt_batch``,
            ``workspace_mb``, ``timing_cache``, ``compute_capability``, ``strongly_typed``,
            ``hardware_compat``, ``version_compat``, ``fp32_scopes``, ``flavour``).

    Returns:
        ``(updated bundle, build record)``.

    Raises:
        BundleError: invalid bundle. BuildError / BackendError: see :func:`build_engine`.
    """
    bundle = Bundle.open(bundle_path)
    with tempfile.TemporaryDirectory(prefix=".masf-build-", dir=bundle.path.parent) as tmp:
        work = Path(tmp)
        built = build_engine(
            bundle.onnx_path,
            work / "engine.plan",
            precision,
            max_batch,
            network_onnx_path=work / f"{bundle.onnx_path.stem}.fp16.onnx",
            **options,
        )
        name = engine_name(built)
        record = dataclasses.replace(built, engine_file=name)
        record_file = record_path(name).name
        files: dict[str, str | Path | bytes] = {
            name: work / "engine.plan",
            record_file: (json.dumps(record.to_dict(), indent=2) + "\n").encode(),
        }
        if record.network_onnx_file != record.onnx_file:
            files[record.network_onnx_file] = work / record.network_onnx_file
        entry = {
            "file": name,
            "record": record_file,
            "precision": precision,
            "tensorrt": f"{record.tensorrt_flavour} {record.tensorrt_version}",
            "target": record.target_sms or record.hardware_compatibility,
            "max_batch": int(max_batch),
            "network": record.network_onnx_file,
        }
        engines = [e for e in bundle.engines if e.get("file") != name] + [entry]
        updated = update_bundle(bundle.path, files, {"engines": engines})
    return updated, record


def select_engine(
    bundle: Bundle,
    flavour: str,
    version: str,
    compute_capability: tuple[int, int] | None,
    precision: str | None = None,
    engine: str | None = None,
) -> tuple[dict[str, Any] | None, BuildRecord | None, list[str]]:
    """The first engine of ``bundle`` that can run here.

    Args:
        bundle: the opened bundle.
        flavour, version: the running TensorRT.
        compute_capability: the running GPU's ``(major, minor)`` (None: no GPU).
        precision: only engines of this precision (None: any).
        engine: only the engine with this file name.

    Returns:
        ``(entry, record, problems)``: the chosen manifest entry and its record, or ``(None, None,
        problems)`` with one line per engine that does not fit (empty when the bundle has none).

    Raises:
        BundleError: a build record is missing or corrupt.
    """
    problems = []
    for entry in bundle.engines:
        if engine is not None and entry["file"] != engine:
            continue
        if precision is not None and entry["precision"] != precision:
            problems.append(f"{entry['file']}: precision {entry['precision']}, not {precision}")
            continue
        record = BuildRecord.load(bundle.file(entry["record"]))
        if record.onnx_sha256 != bundle.manifest["files"][bundle.manifest["export"]["file"]]["sha256"]:
            problems.append(f"{entry['file']}: built from another model.onnx")
            continue
        why = compatibility_problems(record, flavour, version, compute_capability)
        if not why:
            return entry, record, []
        problems.append(f"{entry['file']}: {'; '.join(why)}")
    if engine is not None and not any(e["file"] == engine for e in bundle.engines):
        raise BundleError(
            f"bundle {bundle.path}: has no engine {engine!r} (engines: {[e['file'] for e in bundle.engines]})"
        )
    return None, None, problems
