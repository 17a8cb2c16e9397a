"""Bundles, export and inference backends. Torch-free except engines.export."""
