"""MASF Edge daemon: cameras in, PASS / FAIL / UNKNOWN and heatmaps out over ZeroMQ.

Torch-free: the edge side imports ``engines`` (bundles, preprocessing, backends) and never torch, timm or
the trainer (checked by a test in a fresh interpreter).
"""

__version__ = "0.1.0"
