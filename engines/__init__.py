"""The torch-free contract between the trainer and the edge: bundles, preprocessing, pixel formats,
verdicts, configuration machinery, ONNX graph tools, TensorRT building and the inference backends.

Dependencies run one way: ``trainer -> engines <- edge``. Nothing here imports torch or the trainer; the
torch side plugs in through entry points (``masf_edge.backends``: the torch reference backend,
``masf_edge.exporters``: ``masf-engine export``).
"""

__version__ = "0.1.0"
