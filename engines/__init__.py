"""Bundles, export and inference backends.

Torch-free except ``engines.export`` and ``engines.backends.torch_backend`` (the trainer side).
"""

__version__ = "0.1.0"
