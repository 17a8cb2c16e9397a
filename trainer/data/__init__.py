"""Data layer: MVTec-layout folder scanning, image IO and deterministic train/calibration splits.

Torch-free (numpy + OpenCV). Every user-fixable problem raises :class:`trainer.errors.DataError`.
"""

from trainer.data.io import image_sha256, is_grayscale, read_image, read_mask
from trainer.data.mvtec import IMAGE_EXTENSIONS, Sample, data_fingerprint, scan_test, scan_train
from trainer.data.splits import Split, split_train_calib

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "Split",
    "data_fingerprint",
    "image_sha256",
    "is_grayscale",
    "read_image",
    "read_mask",
    "scan_test",
    "scan_train",
    "split_train_calib",
]
