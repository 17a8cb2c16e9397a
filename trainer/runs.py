"""Run directories: what ``masf-train fit`` writes and ``evaluate`` / export read.

A run directory holds:

* ``model.safetensors``: the whole model state (teacher, SDM, students, fusion, memory banks and the
  calibration statistics buffers); no pickle.
* ``run.json``: ``schema_version`` (int), producer, the resolved config, preprocessing spec, backbone
  facts (normalisation, channels, strides), the train/calibration split with its hashes, the training
  data fingerprint, calibration (threshold, rule, statistics), training log summary, versions.
* ``config.yaml``: the resolved config, for people.

Loading checks the schema version, the presence of every file and a strict state-dict match, and raises
:class:`~trainer.errors.RunError` with a one-line message otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from engines.fileio import write_atomic
from engines.preprocess import PreprocessSpec
from trainer.calibrate import Calibration
from trainer.config import Config, config_from_dict, config_to_dict
from trainer.errors import ConfigError, RunError

if TYPE_CHECKING:
    from trainer.models.masf import MASF

__all__ = ["SCHEMA_VERSION", "RunInfo", "load_run", "save_run"]

SCHEMA_VERSION = 1
MODEL_FILE = "model.safetensors"
RUN_FILE = "run.json"


@dataclass
class RunInfo:
    """Everything about a run except the weights."""

    config: Config
    preprocess: PreprocessSpec
    calibration: Calibration
    meta: dict[str, Any]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.height, self.preprocess.width


def save_run(out_dir: Path, model: torch.nn.Module, info: RunInfo) -> None:
    """Write ``model.safetensors``, ``run.json`` and ``config.yaml`` into ``out_dir`` (atomically each)."""
    from safetensors.torch import save

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out_dir / MODEL_FILE, save(state))
    doc = {
        "schema_version": SCHEMA_VERSION,
        **info.meta,
        "config": config_to_dict(info.config),
        "preprocess": info.preprocess.to_dict(),
        "calibration": info.calibration.to_dict(),
    }
    write_atomic(out_dir / RUN_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    write_atomic(
        out_dir / "config.yaml", yaml.safe_dump(config_to_dict(info.config), sort_keys=False).encode()
    )


def read_run_info(run_dir: Path) -> RunInfo:
    """Parse and check ``run.json`` of ``run_dir``."""
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise RunError(
            f"run directory not found: {run_dir} (train one with: masf-train fit ... --out {run_dir})"
        )
    if not path.is_file():
        raise RunError(
            f"{path} is missing: {run_dir} is not a complete run directory (re-run masf-train fit)"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is corrupt ({err.__class__.__name__}): re-run masf-train fit") from None
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunError(
            f"{path}: schema_version {version!r} is not supported by this trainer (max {SCHEMA_VERSION}): "
            "upgrade masf-edge"
        )
    try:
        cfg = config_from_dict(doc["config"], str(path))
        spec = PreprocessSpec.from_dict(doc["preprocess"])
        calib = Calibration.from_dict(doc["calibration"])
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise RunError(f"{path} is invalid ({err}): re-run masf-train fit") from None
    meta = {k: v for k, v in doc.items() if k not in ("config", "preprocess", "calibration")}
    return RunInfo(cfg, spec, calib, meta)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MASF, RunInfo]:
    """Rebuild the trained model of ``run_dir`` (eval mode) and its :class:`RunInfo`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trainer.models.masf import create_masf

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise RunError(f"{weights} is missing: re-run masf-train fit")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{weights} is corrupt or truncated ({err}): re-run masf-train fit") from None
    model = create_masf(info.config, info.input_size, from_checkpoint=True)
    # Banks are empty buffers until filled: size them from the checkpoint before the strict load.
    for i, bank in enumerate(model.bank_list() if model.use_bank else []):
        key = f"banks.{i}.bank"
        if key in state:
            bank.bank = torch.empty_like(state[key])
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad_shape:
        raise RunError(
            f"{weights} does not match its run.json ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad_shape)} mis-shaped tensors, e.g. {(missing + unexpected + bad_shape)[:2]}): "
            "re-run masf-train fit"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info
