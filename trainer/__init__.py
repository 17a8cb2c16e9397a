"""MASF trainer: learns an unsupervised anomaly-detection model from defect-free images of one part."""

__version__ = "0.1.0"
