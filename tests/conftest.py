"""Shared fixtures: tiny configs and generated data sets (made in tmp dirs, never committed).

This file imports neither torch nor the torch side of the trainer at module level, so the edge tests run
(and are collected) where only the edge's dependencies are installed: fixtures that train import torch
inside their bodies.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from engine_support import ExportedBundle, exported_bundle

from trainer.config import Config, config_from_dict

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"
MAGNETIC_TILE = SHARED_DATA / "magnetic_tile" / "magnetic_tile"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(filename: str, module_name: str) -> ModuleType:
    """A script of ``benchmarks/`` loaded as module ``module_name`` (some are named like packages of the
    project, e.g. ``engine_bench``)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_config(**sections: dict[str, Any]) -> Config:
    """A small, fast MASF config (64x64, 2 epochs, small bank, 2 TTSA views); sections override."""
    base: dict[str, Any] = {
        "data": {"input_size": [64, 64], "min_calib": 5},
        "student": {"width": 32},
        "bank": {"max_size": 256},
        "tta": {"views": 2},
        "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return config_from_dict(base, "tiny")


def plant_threshold_defect(synth_data: Path, data: Path, cfg: Config) -> Path:
    """A copy of ``synth_data`` at ``data`` in which one of the good images that will set ``cfg``'s
    threshold (the second threshold image) is a strongly defective part; returns its path."""
    import shutil

    import cv2
    import numpy as np

    from trainer.data import read_image, scan_train, split_train_calib
    from trainer.data.synthetic import add_defect
    from trainer.train import calibration_roles

    shutil.copytree(synth_data, data)
    split = split_train_calib(
        scan_train(data), data, cfg.data.calib_fraction, cfg.data.min_calib, seed=cfg.seed
    )
    _, thr_idx = calibration_roles(cfg, len(split.calib))
    path: Path = split.calib[int(thr_idx[1])]
    img = read_image(path)
    bad, _ = add_defect(np.random.default_rng(0), img, "patch", img[::-1], strength=1.0, scale=3.0)
    cv2.imwrite(str(path), cv2.cvtColor(bad, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated MVTec-layout parts: 20 train, 6 good + 3x4 defective test images, 96x96 RGB."""
    from trainer.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("synth"),
        n_train=20,
        n_test_good=6,
        n_test_defect=4,
        height=96,
        width=96,
        seed=1,
    )


@pytest.fixture(scope="session")
def trained_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained run on ``synth_data``, shared by the tests that only read it.

    It keeps both cues at the configured mix (``fusion.select: none``), so every test sees the whole
    model and graph whatever the mix selection would choose; ``tests/test_select.py`` trains its own."""
    import torch

    from trainer.train import fit

    torch.set_num_threads(2)

    out = tmp_path_factory.mktemp("run")
    fit(tiny_config(fusion={"select": "none"}), synth_data, out, progress=False)
    return out


@pytest.fixture(scope="session")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedBundle:
    """``trained_run`` exported once per session with ``masf-engine export`` (shared by the engine tests)."""
    return exported_bundle(trained_run, tmp_path_factory)


@pytest.fixture(scope="session")
def strip_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated long gray parts (64x512, 8:1): 20 train, 4 good + 3x3 defective test images."""
    from trainer.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("strips"),
        n_train=20,
        n_test_good=4,
        n_test_defect=3,
        height=64,
        width=512,
        gray=True,
        seed=3,
    )


@pytest.fixture(scope="session")
def tiled_run(strip_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on ``strip_data`` with tiled inference (``data.tiling: auto`` tiles an 8:1 part): a 64x512
    frame at native resolution seen as five 64x128 tiles."""
    import torch

    from trainer.train import fit

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiled_run")
    cfg = tiny_config(data={"input_size": "auto", "tile_size": 128}, fusion={"select": "none"})
    fit(cfg, strip_data, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiled_bundle(tiled_run: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedBundle:
    """``tiled_run`` exported with ``masf-engine export`` (parity on tiles, stitched)."""
    return exported_bundle(tiled_run, tmp_path_factory)


def deployed_synthetic_scores(model: Any, info: Any, data: Path) -> Any:
    """A run's synthetic defects (its seed, drawn into its calibration fit images, as the selection draws
    them) scored through ``predict_arrays``, the deployed path: what ``run.json`` ``synthetic_escapes``
    records from the selection's cached cues."""
    import numpy as np
    import torch

    from trainer.data import read_image
    from trainer.inference import predict_arrays
    from trainer.select import synthetic_defects

    calib = info.meta["data"]["split"]["calib"]
    fit = [read_image(data / calib[i]) for i in info.meta["calibration_roles"]["fit"]]
    images = [d[0] for d in synthetic_defects(fit, int(info.config.seed))]
    return np.array([p.score for p in predict_arrays(model, images, info.preprocess, torch.device("cpu"))])
