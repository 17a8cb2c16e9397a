"""OpenCV source: a video file replayed frame by frame, open errors, and a real RTSP camera on loopback.

The RTSP camera is ``rtsp-server-perl`` (a relay) fed by ``ffmpeg`` (H.264 test pattern); both are Debian
packages installed by ``make system-deps``. That relay streams over UDP only, so the source is opened
with ``rtsp_transport="udp"``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from net_support import free_port, free_udp_base

from edge.config import SourceSection
from edge.errors import SourceError
from edge.sources import EndOfStream, Frame, open_source
from edge.sources.opencv import OpenCVSource, classify_uri, redact_uri


def _source(uri: str, **kw: object) -> OpenCVSource:
    fields = {k: v for k, v in kw.items() if k in SourceSection.__dataclass_fields__}
    options = {k: v for k, v in kw.items() if k not in fields}
    src = open_source("cam1", SourceSection(kind="opencv", uri=uri, **fields), **options)  # type: ignore[arg-type]
    assert isinstance(src, OpenCVSource)
    return src


def _video(path: Path, n: int, fourcc: str = "MJPG", size: tuple[int, int] = (64, 48)) -> Path:
    """``n`` frames, frame i a flat grey of level 20 * i (distinguishable after JPEG)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 10, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_classify_and_redact() -> None:
    assert classify_uri("0") == "device"
    assert classify_uri("rtsp://10.0.0.5/stream1") == "stream"
    assert classify_uri("http://127.0.0.1:8080/video.mjpg") == "stream"
    assert classify_uri("videotestsrc ! videoconvert ! appsink") == "pipeline"
    assert classify_uri("/data/line1.avi") == "file"
    assert redact_uri("rtsp://admin:s3cret@10.0.0.5:554/h264") == "rtsp://admin:***@10.0.0.5:554/h264"
    assert redact_uri("rtsp://10.0.0.5/x") == "rtsp://10.0.0.5/x"


def test_video_file_delivers_every_frame_in_order_then_end_of_stream(tmp_path: Path) -> None:
    video = _video(tmp_path / "part.avi", 12)
    with _source(str(video), queue_size=2) as src:
        assert not src.live and not src.supports_trigger
        d = src.describe()
        assert (d["width"], d["height"], d["frame_count"], d["source"]) == (64, 48, 12, "file")
        time.sleep(0.3)  # the reader fills its queue and must wait (a file never drops)
        frames = []
        for i in range(12):
            if i % 4 == 0:
                time.sleep(0.05)  # a slow consumer
            frame = src.read(5.0)
            assert frame is not None
            frames.append(frame)
        with pytest.raises(EndOfStream):
            src.read(5.0)
        assert src.dropped == 0
    assert [f.meta["position"] for f in frames] == list(range(12))
    assert [f.acquisition_id for f in frames] == [str(i) for i in range(12)]
    for i, f in enumerate(frames):
        assert f.error is None and f.pixel_format == "BGR8"
        assert f.image is not None and f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        assert abs(float(f.image.mean()) - 20 * i) < 4  # MJPG is lossy; the order is what counts
    assert not src._thread.is_alive()


def test_video_file_fps_paces_the_replay(tmp_path: Path) -> None:
    video = _video(tmp_path / "part.avi", 5)
    with _source(str(video), fps=20.0) as src:
        t0 = time.monotonic()
        assert all(src.read(5.0) is not None for _ in range(5))
        assert time.monotonic() - t0 >= 0.18


def test_lossless_video_frames_are_canonical_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(tmp_path / "x.avi"), cv2.VideoWriter.fourcc(*"FFV1"), 10, (64, 48))
    writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    with _source(str(tmp_path / "x.avi")) as src:
        frame = src.read(5.0)
    assert frame is not None
    np.testing.assert_array_equal(frame.image, rgb)


def test_pixel_format_that_does_not_fit_gives_a_frame_error(tmp_path: Path) -> None:
    video = _video(tmp_path / "part.avi", 2)
    with _source(str(video), pixel_format="Mono8") as src:
        frame = src.read(5.0)
    assert frame is not None and frame.image is None
    assert frame.error is not None and "source.pixel_format Mono8" in frame.error


def test_open_errors_say_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"video file .*missing.avi not found \(check source.uri\)"):
        _source(str(tmp_path / "missing.avi"))
    (tmp_path / "notes.avi").write_text("not a video")
    with pytest.raises(SourceError, match=r"cannot open file .*notes.avi with OpenCV .*decode"):
        _source(str(tmp_path / "notes.avi"))
    port = free_port()  # a port nobody listens on
    with pytest.raises(SourceError, match=r"cannot open stream rtsp://admin:\*\*\*@127.0.0.1") as err:
        _source(f"rtsp://admin:pw@127.0.0.1:{port}/cam", read_timeout_s=1.0, open_timeout_s=2.0)
    assert "pw" not in str(err.value) and "reachable" in str(err.value)
    with pytest.raises(SourceError, match="cannot open device 99"):
        _source("99", api="v4l2")


@pytest.mark.skipif(
    cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER), reason="this OpenCV build has GStreamer"
)
def test_gstreamer_pipeline_without_gstreamer_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="no GStreamer backend"):
        _source("videotestsrc ! videoconvert ! appsink")
    with pytest.raises(SourceError, match="no GStreamer backend"):
        _source("rtsp://127.0.0.1:1/x", api="gstreamer")


def test_a_file_has_no_trigger_and_close_is_idempotent(tmp_path: Path) -> None:
    src = _source(str(_video(tmp_path / "part.avi", 3)))
    with pytest.raises(SourceError, match="no software trigger"):
        src.trigger()
    src.close()
    src.close()
    assert not src._thread.is_alive()
    with pytest.raises(SourceError, match="closed"):
        src.read(0.1)


# -- a real RTSP camera on loopback --------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes], kill: bool = False) -> None:
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RtspCamera:
    """rtsp-server-perl relay + ffmpeg pushing a 256x256 H.264 test pattern at 10 fps."""

    def __init__(self) -> None:
        self.port, src_port = free_port(), free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}
        self.server = subprocess.Popen(
            [
                "rtsp-server-perl", "-c", str(self.port), "-s", str(src_port),
                "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1",
                "--rtp_start_port", str(free_udp_base()),
            ],
            **quiet,  # type: ignore[call-overload]
        )  # fmt: skip
        _wait_port(src_port, 10.0)
        self.ffmpeg = subprocess.Popen(
            [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
                "-i", "testsrc=size=256x256:rate=10", "-c:v", "libx264", "-preset", "ultrafast",
                "-tune", "zerolatency", "-g", "10", "-pix_fmt", "yuv420p", "-f", "rtsp", f"rtsp://127.0.0.1:{src_port}/cam",
            ],
            **quiet,  # type: ignore[call-overload]
        )  # fmt: skip

    def close(self) -> None:
        _stop(self.ffmpeg, kill=True)
        _stop(self.server)


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@pytest.fixture
def rtsp_camera() -> Iterator[RtspCamera]:
    missing = [b for b in ("rtsp-server-perl", "ffmpeg") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (make system-deps)")
    cam = RtspCamera()
    try:
        yield cam
    finally:
        cam.close()


def _open_when_published(url: str, timeout: float, **kw: object) -> OpenCVSource:
    """The relay answers 404 until ffmpeg has announced the stream: retry until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _source(url, **kw)
        except SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
def test_rtsp_camera_frames_then_stream_lost(rtsp_camera: RtspCamera) -> None:
    before = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    src = _open_when_published(rtsp_camera.url, 20.0, read_timeout_s=1.0, rtsp_transport="udp")
    try:
        assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") == before  # set only while opening
        assert src.live and src.supports_trigger
        frames: list[Frame] = []
        deadline = time.monotonic() + 10.0
        while len(frames) < 3 and time.monotonic() < deadline:
            frame = src.read(1.0)
            if frame is not None:
                frames.append(frame)
        assert len(frames) == 3
        for f in frames:
            assert f.error is None and f.image is not None and f.image.shape == (256, 256, 3)
            assert f.meta == {"uri": rtsp_camera.url}
        # A slow consumer: the reader keeps only the newest frames and counts the rest.
        time.sleep(1.0)
        assert src.read(1.0) is not None
        assert src.dropped >= 1
        # Software trigger: a read gives a frame grabbed after the trigger; two triggers, two frames.
        t_trigger = time.monotonic()
        src.trigger()
        src.trigger()
        first, second = src.read(3.0), src.read(3.0)
        assert first is not None and second is not None
        assert t_trigger <= first.t_mono < second.t_mono
        # Triggered mode: frames only for triggers, none counted as dropped while waiting for one.
        with _source(rtsp_camera.url, read_timeout_s=1.0, rtsp_transport="udp", triggered=True) as trig:
            assert trig.read(0.5) is None
            t_trigger = time.monotonic()
            trig.trigger()
            frame = trig.read(3.0)
            assert frame is not None and frame.t_mono >= t_trigger and frame.image is not None
            assert trig.read(0.3) is None
            assert trig.dropped == 0
        # The camera dies: read raises SourceError within a bounded time (buffered frames first).
        _stop(rtsp_camera.ffmpeg, kill=True)
        t_kill = time.monotonic()
        with pytest.raises(SourceError, match="lost"):
            while time.monotonic() - t_kill < 12.0:
                src.read(0.5)
        assert time.monotonic() - t_kill < 12.0
    finally:
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 5.0
    assert not src._thread.is_alive()
