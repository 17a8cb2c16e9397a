"""PyTorch backend: the reference (trainer side; imports torch and the trainer).

A bundle carries no torch weights, so this backend rebuilds the model from the run the bundle was
exported from (``manifest["source"]``, or an explicit ``run_dir``) and refuses a run whose weights or
preprocessing differ from the bundle's. It runs the same inference path as the graph (TTSA if the bundle
was exported with it) in the reference spectral mode (``torch.fft``) unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backends.base import Backend
from engines.bundle import Bundle, sha256_file
from engines.errors import BundleError

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Runs the trained model in PyTorch eager mode.

    Args:
        bundle: the opened bundle.
        model: the deployed model (``model(x [N, 3, H, W] float 0..255, valid) -> MASFOutput``), eval mode.
        device: torch device of ``model``.
    """

    name = "torch"

    def __init__(self, bundle: Bundle, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        super().__init__(bundle)
        self.model = model.eval()
        self.device = torch.device(device)

    @classmethod
    def from_bundle(cls, path: str | Path, **options: Any) -> TorchBackend:
        """Rebuild the bundle's model from its run.

        Options:
            run_dir: the run directory (default: ``manifest["source"]["run_dir"]``).
            device: ``"cpu"`` (default) or a CUDA device.
            spectral_mode: ``"fft"`` (default, the reference) or ``"gemm"`` (what the graph computes).

        Raises:
            BundleError: the run is missing or does not match the bundle.
            trainer.errors.RunError: the run directory is corrupt.
        """
        from trainer.models.masf import apply_tta
        from trainer.models.masf.spectral import set_spectral_mode
        from trainer.runs import load_run

        bundle = Bundle.open(path)
        source = bundle.manifest.get("source") or {}
        run_dir = Path(options.pop("run_dir", None) or source.get("run_dir", ""))
        device = options.pop("device", "cpu")
        spectral_mode = options.pop("spectral_mode", "fft")
        if options:
            raise TypeError(f"unknown TorchBackend options: {sorted(options)}")
        weights = run_dir / "model.safetensors"
        if not weights.is_file():
            raise BundleError(
                f"bundle {bundle.path}: its run {run_dir} is not available: pass run_dir= (the run it was "
                "exported from)"
            )
        expected = source.get("weights_sha256")
        if expected and sha256_file(weights) != expected:
            raise BundleError(
                f"bundle {bundle.path}: run {run_dir} has other weights than the bundle was exported from: "
                "pass the matching run or re-export"
            )
        model, info = load_run(run_dir, device)
        if info.preprocess != bundle.preprocess:
            raise BundleError(
                f"bundle {bundle.path}: run {run_dir} uses another preprocessing than the bundle"
            )
        cfg = info.config
        deployed, _ = apply_tta(
            model, bool(bundle.manifest["export"]["tta"]), cfg.tta.views, cfg.tta.sigma, cfg.tta.seed
        )
        set_spectral_mode(deployed, spectral_mode)
        return cls(bundle, deployed, device)

    @torch.no_grad()
    def _forward(self, batch: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        out = self.model(x, torch.from_numpy(valid).to(self.device))
        return out.anomaly_map.float().cpu().numpy(), out.pred_score.float().cpu().numpy()

    def close(self) -> None:
        super().close()
