"""``masf-engine export``: a run directory -> a verified bundle (ONNX graph + manifest).

Steps: load the run (strict), export the graph (:func:`~trainer.export.onnx.export_onnx`), compare ONNX
Runtime with PyTorch eager on verification images (the run's own calibration images by default, or the
test images of ``--verify-data``), then write the bundle atomically. A failed parity check writes nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import engines
from engines.bundle import Bundle, sha256_file, write_bundle
from engines.errors import BundleError, ExportError
from engines.pixels import CANONICAL
from trainer.export.onnx import export_onnx

if TYPE_CHECKING:
    from trainer.runs import RunInfo

__all__ = ["build_manifest", "export_run", "verification_images"]

ONNX_FILE = "model.onnx"


def verification_images(info: RunInfo, verify_data: str | Path | None = None) -> tuple[list[np.ndarray], str]:
    """Images for the parity check and where they come from.

    Args:
        info: the run.
        verify_data: a data folder in MVTec layout (all its ``test/`` images are used); None: the run's
            calibration images (under the data root recorded in ``run.json``).

    Raises:
        ExportError: the run's calibration images are no longer there.
        trainer.errors.DataError: unreadable images or an invalid data folder.
    """
    from trainer.data import read_image, scan_test

    if verify_data is not None:
        root = Path(verify_data)
        paths = [s.path for s in scan_test(root)]
        source = f"{len(paths)} test images of {root}"
    else:
        data = info.meta.get("data", {})
        root = Path(data.get("root", ""))
        paths = [root / p for p in data.get("split", {}).get("calib", [])]
        missing = [p for p in paths if not p.is_file()]
        if not paths or missing:
            raise ExportError(
                f"the run's calibration images are not available under {root} "
                f"({len(missing)} of {len(paths)} missing): pass --verify-data DIR (MVTec layout)"
            )
        source = f"{len(paths)} calibration images of {root}"
    return [read_image(p) for p in paths], source


def build_manifest(
    info: RunInfo,
    run_dir: Path,
    record: Mapping[str, Any],
    part: str,
    validation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every manifest section except ``files`` (see :mod:`engines.bundle`)."""
    from trainer.config import config_to_dict
    from trainer.train import calibration_for

    meta = info.meta
    spec = info.preprocess
    backbone = dict(meta.get("backbone", {}))
    path = str(record["calibration_path"])
    by_path = dict(meta.get("calibration_by_path") or {path: info.calibration.to_dict()})
    split = meta.get("data", {}).get("split", {})
    return {
        "producer": {"name": "masf-engine", "version": engines.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "family": str(meta.get("model_family", "masf")),
            "part": part,
            "config": config_to_dict(info.config),
        },
        "input": {
            "height": spec.height,
            "width": spec.width,
            "channels": 3,
            "channel_order": "RGB",
            "pixel_format": CANONICAL,  # every frame goes through engines.pixels.to_canonical first
            "layout": "NHWC",
            "dtype": "uint8",
            "valid_mask": "uint8 [N, 1, H, W]: 1 on image pixels, 0 on letterbox padding",
        },
        "preprocess": spec.to_dict(),
        "normalization": {
            "mean": backbone.get("mean"),
            "std": backbone.get("std"),
            "input_range": [0, 255],
            "applied": "inside the graph: (x - 255 * mean) / (255 * std)",
        },
        "backbone": backbone,
        "calibration": {
            "path": path,
            "by_path": {**by_path, path: calibration_for(info, path == "tta").to_dict()},
            # good threshold images a review left out (masf-train drop), for the audit trail
            "dropped": [str(e["image"]) for e in meta.get("calibration_dropped") or []],
        },
        "data": {
            "train_fingerprint": str(meta.get("data", {}).get("train_fingerprint", "")),
            "n_train": split.get("n_train"),
            "n_calib": split.get("n_calib"),
            "train_sha256": split.get("train_sha256"),
            "calib_sha256": split.get("calib_sha256"),
        },
        "validation": dict(validation) if validation is not None else None,
        "source": {
            "run_dir": str(run_dir.resolve()),
            "weights_sha256": sha256_file(run_dir / "model.safetensors"),
            "run_producer": meta.get("producer"),
            "run_created": meta.get("created"),
        },
        "export": dict(record),
    }


def export_run(
    run_dir: str | Path,
    out: str | Path,
    spectral_mode: str = "gemm",
    tta: bool = False,
    part: str | None = None,
    verify_data: str | Path | None = None,
    validation: Mapping[str, Any] | None = None,
    opset: int = 18,
    overwrite: bool = False,
    threads: int | None = None,
) -> Bundle:
    """Export the run at ``run_dir`` into a new bundle at ``out`` (see the module docstring).

    Args:
        run_dir: run directory written by ``masf-train fit``.
        out: bundle directory to create.
        spectral_mode: ``"gemm"``, ``"dft"`` or ``"plugin"`` (see :mod:`trainer.export.onnx`).
        tta: export the TTSA path (threshold of the ``tta`` calibration).
        part: part name for the manifest (default: the name of the run's data folder).
        verify_data: parity images from this MVTec-layout folder's ``test/`` (default: calibration images).
        validation: metrics to record (e.g. the JSON of ``masf-train evaluate``).
        opset: ONNX opset.
        overwrite: replace an existing bundle.
        threads: ONNX Runtime threads for the parity run.

    Returns:
        The written bundle (checksums verified).

    Raises:
        trainer.errors.RunError: bad run directory.
        ExportError / ParityError / BundleError: see :func:`export_onnx` and :func:`write_bundle`.
    """
    from trainer.runs import load_run

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:  # fail before the (slow) export, not after it
        raise BundleError(f"bundle {out}: already exists: choose another --out or pass --overwrite")
    model, info = load_run(run_dir)
    images, source = verification_images(info, verify_data)
    if part is None:
        part = Path(str(info.meta.get("data", {}).get("root", run_dir))).name or run_dir.name
    with tempfile.TemporaryDirectory(prefix="masf-export-") as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        record = export_onnx(
            model, info, onnx_path, spectral_mode, tta, opset, parity_images=images, threads=threads
        )
        record["parity"]["images"] = source
        manifest = build_manifest(info, run_dir, record, part, validation)
        return write_bundle(out, manifest, {ONNX_FILE: onnx_path}, overwrite=overwrite)
