"""Shared artefacts of the engine tests.

A bundle export (torch.export + torch.onnx + parity) takes ~20 s here, so every engine test module uses
the same one: the session fixture ``exported`` (``conftest.py``) calls :func:`exported_bundle` once. It is
made through the CLI (``masf-engine export``), so it also exercises the command; its exit code and output
are kept for ``test_engine_cli``.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class ExportedBundle:
    """The shared bundle and how the CLI reported it."""

    path: Path
    run: Path
    exit_code: int
    stdout: str
    stderr: str


def exported_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedBundle:
    """Export ``trained_run`` with ``masf-engine export`` (gemm, plain path)."""
    import torch

    from engines.cli import main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bundle")
    metrics = root / "eval.json"
    metrics.write_text(json.dumps({"image_auroc": 0.9, "pixel_auroc": 0.8}))
    out = root / "part.bundle"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["export", "--run", str(trained_run), "--out", str(out), "--part", "widget", "--threads", "1"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, "--metrics", str(metrics)])
    result = ExportedBundle(out, trained_run, code, stdout.getvalue(), stderr.getvalue())
    if code != 0:
        pytest.fail(f"masf-engine export failed ({code}): {result.stderr}")
    return result


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repo root (what a separate edge process imports)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
