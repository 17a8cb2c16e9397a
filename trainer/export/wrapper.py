"""The module that is exported: uint8 NHWC frames in, raw anomaly map and score out.

The edge feeds exactly what :func:`engines.preprocess.preprocess_batch` produces (uint8 ``[N, H, W, 3]``
RGB) plus the letterbox mask, so the graph starts with the casts and the NHWC -> NCHW transpose; the
normalisation (mean/std of the backbone) is the model's own first op. Both uint8 inputs are cast to float
before any other op touches them: TensorRT takes UINT8 tensors only in Cast/Identity layers (a Transpose
or Reshape of a UINT8 tensor is rejected by its ONNX parser), and ``trt_ops.trt10_issues`` checks it.
No threshold inside: the graph returns raw scores and the calibrated threshold travels in the bundle
manifest.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ExportWrapper"]


class ExportWrapper(nn.Module):
    """Adapts a MASF model (plain or TTSA-wrapped) to the bundle's graph interface.

    Args:
        model: callable as ``model(x, valid) -> MASFOutput`` with ``x [N, 3, H, W]`` float RGB 0..255.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a preprocessed batch.

        Args:
            image: uint8 ``[N, H, W, 3]`` RGB (model frame).
            valid: uint8 ``[N, 1, H, W]``, 1 on real image pixels, 0 on letterbox padding.

        Returns:
            ``(anomaly_map, score)``: float32 ``[N, 1, H, W]`` and ``[N]``.
        """
        x = image.to(torch.float32).permute(0, 3, 1, 2)  # cast first (TensorRT: UINT8 only into a Cast)
        out = self.model(x, valid.to(torch.float32))  # [N, 3, H, W] 0..255; mask 0./1.
        return out.anomaly_map.to(torch.float32), out.pred_score.to(torch.float32)
