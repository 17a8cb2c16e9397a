"""Torch-free artefacts of the edge tests: a tiny real ONNX bundle, part images, free ports, a daemon process.

The tiny bundle is a real ONNX graph with the bundle's contract (uint8 ``image [N, H, W, 3]`` and
``valid [N, 1, H, W]`` in, ``anomaly_map [N, 1, H, W]`` and ``score [N]`` out), written with
:func:`engines.bundle.write_bundle`, so ONNX Runtime, the manifest seal and every daemon path are the
product's own. Its anomaly map is ``|mean(RGB) - 128| / 32`` on image pixels (0 on letterbox padding) and
the score is the map's maximum: a mid-gray part PASSes, a part with a dark spot FAILs, and the verdict of
every generated image is known in advance, which is what the daemon tests need (the model's quality is
tested on the trainer side).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from net_support import free_port

from engines.bundle import Bundle, write_bundle
from engines.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 1.0  # |gray - 128| / 32 >= 1 <=> a pixel 32 levels away from mid-gray


def tiny_onnx(height: int, width: int, delay_iters: int = 0) -> bytes:
    """The tiny anomaly graph (opset 18) as serialized ONNX; ``delay_iters`` > 0 adds a Loop of that many
    iterations whose result is multiplied by 0 into the score: a model that is slow (or hangs)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["img_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["img_f", "ax3"], ["gray"], keepdims=1),  # [N, H, W, 1]
        helper.make_node("Transpose", ["gray"], ["gray_t"], perm=[0, 3, 1, 2]),  # [N, 1, H, W]
        helper.make_node("Sub", ["gray_t", "mid"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["absd"]),
        helper.make_node("Div", ["absd", "scale"], ["raw"]),
        helper.make_node("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["raw", "valid_f"], ["anomaly_map"]),
        helper.make_node(
            "ReduceMax", ["anomaly_map", "ax123"], ["score" if not delay_iters else "score0"], keepdims=0
        ),
    ]
    inits = [
        helper.make_tensor("ax3", TensorProto.INT64, [1], [3]),
        helper.make_tensor("ax123", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("mid", TensorProto.FLOAT, [], [128.0]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [32.0]),
    ]
    if delay_iters:
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                helper.make_node("Add", ["v_in", "one"], ["v_out"]),
            ],
            "spin",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
            ],
            [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
        )
        nodes += [
            helper.make_node("Loop", ["trips", "go", "v0"], ["v_final"], body=body),
            helper.make_node("Mul", ["v_final", "zero"], ["nothing"]),
            helper.make_node("Add", ["score0", "nothing"], ["score"]),
        ]
        inits += [
            helper.make_tensor("trips", TensorProto.INT64, [], [delay_iters]),
            helper.make_tensor("go", TensorProto.BOOL, [], [True]),
            helper.make_tensor("v0", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny_anomaly",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", height, width, 3]),
            helper.make_tensor_value_info("valid", TensorProto.UINT8, ["N", 1, height, width]),
        ],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, height, width]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def make_tiny_bundle(
    out: Path,
    height: int = 64,
    width: int = 64,
    threshold: float = THRESHOLD,
    part: str = "widget",
    delay_iters: int = 0,
    tiles: tuple[int, int, int] | None = None,
    orient: str = "keep",
    **model: Any,
) -> Bundle:
    """Write the tiny bundle to ``out`` (letterbox RGB preprocessing, ``threshold`` calibrated).
    ``tiles``: ``(frame_height, frame_width, overlap)`` of a tiled bundle whose tiles are ``height`` x
    ``width``. ``orient``: the bundle's ``preprocess.orient``."""
    frame = None if tiles is None else (tiles[0], tiles[1])
    overlap = 0 if tiles is None else tiles[2]
    spec = PreprocessSpec(
        height, width, "letterbox", "rgb", tile_frame=frame, tile_overlap=overlap, orient=orient
    )
    calib = {
        "threshold": threshold,
        "rule": "test",
        "target_frr": 0.01,
        "n_images": 10,
        "calib_frr": 0.0,
        "image_scores": {"max": threshold / 2},
        "pixel_scores": {"p50": 0.05, "p999": threshold * 0.9},
    }
    manifest = {
        "producer": {"name": "edge-tests", "version": "0"},
        "created": "2026-12-01T00:00:00+00:00",
        "model": {"family": "tiny", "part": part, "config": {}, **model},
        "input": {
            "height": height,
            "width": width,
            "channels": 3,
            "channel_order": "RGB",
            "layout": "NHWC",
            "dtype": "uint8",
        },
        "preprocess": spec.to_dict(),
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "backbone": {"name": "none"},
        "calibration": {"path": "plain", "by_path": {"plain": calib}},
        "data": {"train_fingerprint": "0" * 64},
        "validation": None,
        "export": {
            "file": "model.onnx",
            "format": "onnx",
            "opset": 18,
            "spectral_mode": "gemm",
            "tta": False,
            "inputs": ["image", "valid"],
            "outputs": ["anomaly_map", "score"],
        },
    }
    return write_bundle(out, manifest, {"model.onnx": tiny_onnx(height, width, delay_iters)}, overwrite=True)


def part_image(defect: bool, seed: int = 0, height: int = 80, width: int = 96) -> np.ndarray:
    """A mid-gray RGB part with mild noise; ``defect`` adds a dark spot (the tiny model FAILs it)."""
    rng = np.random.default_rng(seed)
    img = np.clip(128 + rng.normal(0, 4, (height, width, 3)), 100, 156).astype(np.uint8)
    if defect:
        cy, cx = int(rng.integers(15, height - 15)), int(rng.integers(15, width - 15))
        cv2.circle(img, (cx, cy), 6, (20, 20, 20), -1)
    return img


def write_parts(folder: Path, n: int, defect_every: int = 3, **kw: Any) -> list[bool]:
    """Write ``n`` PNG parts named ``0000.png`` ...; every ``defect_every``-th is defective.

    Returns:
        Whether each part (in name order) is defective.
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(n):
        defect = defect_every > 0 and i % defect_every == defect_every - 1
        bgr = cv2.cvtColor(part_image(defect, seed=i, **kw), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{i:04d}.png"), bgr)
        labels.append(defect)
    return labels


def line_config(tmp: Path, cameras: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """A line config on free loopback ports (metrics on a free port too)."""
    doc: dict[str, Any] = {
        "line": "test",
        "publish": {"address": f"tcp://127.0.0.1:{free_port()}", "heartbeat_s": 0.5},
        "control": {"address": f"tcp://127.0.0.1:{free_port()}"},
        "metrics": {"enabled": True, "port": free_port()},
        "pipeline": {"drain_timeout_s": 10.0, "stall_s": 5.0},
        "cameras": cameras,
    }
    for key, value in sections.items():
        doc.setdefault(key, {}).update(value) if isinstance(value, dict) else doc.update({key: value})
    return doc


def write_config(tmp: Path, doc: dict[str, Any], name: str = "line.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextmanager
def daemon_process(
    config: Path, env: dict[str, str] | None = None, *extra: str
) -> Iterator[subprocess.Popen[str]]:
    """``python -m edge run --config CONFIG`` as a real subprocess; stopped with SIGTERM (then killed)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config), *extra],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc, 20)


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a test's subprocess (if it still runs) and wait; kill it when it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_ready(control: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``status`` on the control socket until the daemon answers; returns the status."""
    from edge.errors import EdgeError
    from edge.subscriber import ControlClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = ControlClient(control, timeout_s=1.0)
        try:
            reply = client.request("status")
            if reply.get("ok") and reply.get("state") == "running":
                return reply
        except EdgeError as err:
            last = err
        finally:
            client.close()
        time.sleep(0.2)
    raise TimeoutError(f"daemon not ready on {control}: {last}")


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


# ---------------------------------------------------------------------------------------------- systemd units

ANALYZE = Path("/usr/bin/systemd-analyze")
INSTALLED_EXEC = "/usr/local/bin/masf-edge"


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment of a unit file, in order (comments, blank lines skipped)."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(unit: Path, key: str, section: str = "Service") -> list[str]:
    """Every value of ``key`` in ``section`` of the unit file, in order."""
    return [v for s, k, v in unit_directives(unit.read_text()) if s == section and k == key]


def local_unit_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit in tmp_path with ExecStart pointing at an executable that exists here (User= kept)."""
    exe = Path(sys.executable).parent / "masf-edge"
    if not os.access(exe, os.X_OK):
        exe = Path(sys.executable)
    text = unit.read_text()
    assert text.count(f"ExecStart={INSTALLED_EXEC} ") == 1
    out = tmp_path / unit.name
    out.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ", f"ExecStart={exe} "))
    return out


def analyze_verify(unit: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify`` of ``unit``: exit status and the output lines that mention the unit (its
    name or its folder)."""
    proc = subprocess.run(
        [str(ANALYZE), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    stem = unit.name.split("@")[0]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if stem in ln or str(unit.parent) in ln]
    return proc.returncode, lines
