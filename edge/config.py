"""The line configuration of the edge daemon (``configs/edge/*.yaml``), typed and validated on load.

One file per production line: the line name, where results are published, the control socket, metrics,
the evidence store, security, and one entry per camera (its source, bundle, backend, mode and threshold
override). Validation uses the shared machinery of :mod:`engines.config`, so a bad value is one error
naming the file and the dotted field (``configs/edge/line1.yaml: cameras[0].mode must be one of
'free_run', 'triggered', got 'freerun'``) and ``--set cameras.0.threshold=3.5`` overrides work.
Every field, its default and its rule are below; relative paths are relative to the config file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engines.config import ConfigError, build, field_spec, load_yaml, oneof, to_dict
from engines.pixels import PIXEL_FORMATS

__all__ = [
    "CameraSection",
    "ControlSection",
    "EdgeConfig",
    "EvidenceSection",
    "GatewaysSection",
    "MetricsSection",
    "ModbusSection",
    "OpcUaSection",
    "PageSection",
    "PipelineSection",
    "PublishSection",
    "SecuritySection",
    "SourceSection",
    "StoreSection",
    "config_from_dict",
    "load_edge_config",
]

_f = field_spec
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_RULE = "a name of letters, digits, '_', '.' or '-' (at most 64, no '/')"


def _name(x: Any) -> bool:
    return isinstance(x, str) and _NAME.fullmatch(x) is not None


def _pos(x: Any) -> bool:
    return x > 0


def _nonneg(x: Any) -> bool:
    return x >= 0


def _zmq_addr(x: Any) -> bool:
    return isinstance(x, str) and re.fullmatch(r"(tcp|ipc|inproc)://\S+", x) is not None


_ADDR_RULE = "a ZeroMQ endpoint such as 'tcp://127.0.0.1:5556' or 'ipc:///run/masf/line1.pub'"
_SOURCE_KINDS = ("folder", "opencv", "genicam")


@dataclass(frozen=True, kw_only=True)
class SourceSection:
    """Where a camera's frames come from. ``kind`` selects which of the other fields apply."""

    kind: str = _f(dataclasses.MISSING, *oneof(*_SOURCE_KINDS))
    # folder: images in name order (PNG/JPEG/BMP/TIFF); loop restarts at the first; fps 0 = as fast as
    # the pipeline takes them; step: one image per software trigger (triggered mode).
    path: str | None = _f(None)
    loop: bool = _f(False)
    fps: float = _f(0.0, _nonneg, "non-negative (0: as fast as possible / the camera's own rate)")
    step: bool = _f(False)
    # opencv: device index ("0"), video file, rtsp:// or http:// URL, or a GStreamer pipeline string.
    uri: str | None = _f(None)
    api: str = _f("auto", *oneof("auto", "ffmpeg", "gstreamer", "v4l2"))
    # RTSP transport for FFmpeg (null: FFmpeg's default, TCP); some cameras and relays serve UDP only.
    rtsp_transport: str | None = _f(None, *oneof("udp", "tcp"))
    # genicam: GenTL producer (.cti) files; the camera by serial number or user-defined name (else the
    # first one found); pixel format, exposure, frame rate and trigger written to the camera's node map.
    cti: list[str] = field(default_factory=list)
    serial: str | None = _f(None)
    user_id: str | None = _f(None)
    exposure_us: float | None = _f(None, _pos, "positive (microseconds)")
    trigger_source: str = _f("software", *oneof("software", "Line0", "Line1", "Line2", "Line3"))
    # all kinds: the format of the frames as delivered (OpenCV: BGR8; GenICam: set on the camera).
    pixel_format: str | None = _f(None, lambda x: x in PIXEL_FORMATS, "a GenICam pixel format name")
    width: int | None = _f(None, _pos, "a positive int")
    height: int | None = _f(None, _pos, "a positive int")
    read_timeout_s: float = _f(2.0, _pos, "positive (seconds)")


@dataclass(frozen=True, kw_only=True)
class CameraSection:
    """One camera: its frames, the part's bundle and how results are made."""

    name: str = _f(dataclasses.MISSING, _name, _NAME_RULE)
    source: SourceSection
    bundle: str = _f(dataclasses.MISSING, lambda x: bool(x), "a bundle directory")
    backend: str = _f("onnxruntime", *oneof("onnxruntime", "ort", "tensorrt", "trt"))
    # ONNX Runtime intra-op threads (0: its default); TensorRT: ignored.
    threads: int = _f(0, _nonneg, "a non-negative int (0: the backend's default)")
    # free_run: keep only the newest frame (older ones dropped and counted); triggered: every frame is a
    # part and is inspected in order (overflow: that part is published as UNKNOWN, never dropped).
    mode: str = _f("free_run", *oneof("free_run", "triggered"))
    # Overrides the bundle's calibrated threshold (recorded in every result); null: the bundle's.
    threshold: float | None = _f(None)
    # A frame older than this when inference starts (triggered mode) is UNKNOWN ("stale").
    max_frame_age_s: float = _f(10.0, _pos, "positive (seconds)")


@dataclass(frozen=True)
class PublishSection:
    address: str = _f("tcp://127.0.0.1:5556", _zmq_addr, _ADDR_RULE)
    # ZeroMQ send high-water mark per subscriber (messages): a slow subscriber loses messages beyond it.
    sndhwm: int = _f(1000, _pos, "a positive int")
    # Heatmap PNG: always, only with FAIL/UNKNOWN, or on every Nth result (and every FAIL/UNKNOWN).
    heatmaps: str = _f("always", *oneof("always", "fail", "every_n", "never"))
    heatmap_every: int = _f(10, _pos, "a positive int")
    heartbeat_s: float = _f(1.0, _pos, "positive (seconds)")
    # Start the cameras only once this many subscribers are connected (or after wait_timeout_s): for
    # replays and demos, where the first parts would otherwise be published before anyone listens.
    # 0 (production default): start at once; a late subscriber recovers the state with `last`.
    wait_for_subscribers: int = _f(0, _nonneg, "a non-negative int")
    wait_timeout_s: float = _f(30.0, _pos, "positive (seconds)")


@dataclass(frozen=True)
class ControlSection:
    address: str = _f("tcp://127.0.0.1:5557", _zmq_addr, _ADDR_RULE)
    max_request_bytes: int = _f(65536, _pos, "a positive int")


@dataclass(frozen=True)
class SecuritySection:
    # CURVE encryption of the publish and control sockets: the server's secret key file (from
    # `masf-edge keys`) and a folder of allowed clients' public key files (empty: any client with a key).
    curve: bool = _f(False)
    server_secret_key: str | None = _f(None)
    client_public_keys: str | None = _f(None)
    # For the processes beside the daemon (gateways, the operator page) when curve is on: the daemon's
    # public key file and a client secret key whose public key is in client_public_keys.
    server_public_key: str | None = _f(None)
    client_secret_key: str | None = _f(None)
    # Refuse any bundle that is not signed by one of these ed25519 public keys (PEM files).
    require_signed_bundles: bool = _f(False)
    trusted_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = _f(True)
    host: str = _f("127.0.0.1")
    port: int = _f(9108, lambda x: 0 <= x <= 65535, "a TCP port (0: any free one)")


@dataclass(frozen=True)
class EvidenceSection:
    # FAIL / UNKNOWN frames with their heatmap overlay and header; null: not kept.
    dir: str | None = _f(None)
    max_mb: float = _f(500.0, _pos, "positive (MB)")
    max_age_days: float = _f(30.0, _pos, "positive (days)")
    # Nothing is written while the evidence file system has less than this free (the daemon is degraded,
    # evidence_low_disk, until space is back).
    min_free_mb: float = _f(1000.0, _nonneg, "non-negative (MB)")
    verdicts: list[str] = field(
        default_factory=lambda: ["FAIL", "UNKNOWN"],
        metadata={
            "check": lambda v: all(x in ("PASS", "FAIL", "UNKNOWN") for x in v),
            "rule": "a list of PASS, FAIL, UNKNOWN",
        },
    )


@dataclass(frozen=True)
class PipelineSection:
    # Frames waiting for inference per camera (triggered mode: beyond it, parts are UNKNOWN).
    queue_size: int = _f(8, _pos, "a positive int")
    # Frames of cameras sharing one bundle scored in one batch when several wait.
    max_batch: int = _f(4, _pos, "a positive int")
    # An inference taking longer is reported UNKNOWN ("timeout") and the daemon is marked degraded.
    infer_timeout_s: float = _f(10.0, _pos, "positive (seconds)")
    # SIGTERM: in-flight frames are finished and published within this time, then the daemon exits.
    drain_timeout_s: float = _f(10.0, _pos, "positive (seconds)")
    # Camera loss: reconnect after min, doubling up to max seconds.
    reconnect_min_s: float = _f(0.5, _pos, "positive (seconds)")
    reconnect_max_s: float = _f(10.0, _pos, "positive (seconds)")
    # The watchdog is fed only while some camera's frames progressed within this time or every camera
    # is idle-healthy (triggered and waiting, paused).
    stall_s: float = _f(10.0, _pos, "positive (seconds)")
    # Inferences run once on a blank frame per bundle before READY.
    warmup: bool = _f(True)


@dataclass(frozen=True)
class StoreSection:
    """The model store and on-device retraining (``edge/store.py``, ``edge/retrain.py``)."""

    # The store folder (parts/<part>/<version>/, current, history); cameras name a part's live model as
    # `bundle: store:<part>`. null: no store (no retraining).
    dir: str | None = _f(None)
    keep: int = _f(5, lambda x: x >= 2, "an int >= 2 (current and the previous version always stay)")
    # Training config for on-device jobs; null: configs/train/masf_lite2_fast.yaml of this installation.
    train_config: str | None = _f(None)
    min_images: int = _f(20, _pos, "a positive int")
    nice: int = _f(10, lambda x: 0 <= x <= 19, "0..19")
    threads: int = _f(1, _pos, "a positive int")
    shadow_frames: int = _f(50, _nonneg, "a non-negative int (0: no shadow run)")
    shadow_timeout_s: float = _f(120.0, _pos, "positive (seconds)")
    # ed25519 private key (PEM) that signs every version trained here; needed when the line only loads
    # signed bundles (security.require_signed_bundles).
    signing_key: str | None = _f(None)
    # A validated version goes live by itself when this is on and its validation passed.
    auto_promote: bool = _f(False)
    max_calib_frr: float = _f(0.05, lambda x: 0 <= x <= 1, "in [0, 1]")
    max_escape_rate: float = _f(0.1, lambda x: 0 <= x <= 1, "in [0, 1]")
    min_agreement: float = _f(0.9, lambda x: 0 <= x <= 1, "in [0, 1]")


@dataclass(frozen=True)
class OpcUaSection:
    """``masf-edge gateway opcua``: an OPC UA server that mirrors the line's results for PLCs."""

    enabled: bool = _f(False)
    endpoint: str = _f(
        "opc.tcp://127.0.0.1:4840/masf/", lambda x: x.startswith("opc.tcp://"), "an opc.tcp:// URL"
    )
    namespace: str = _f("urn:masf-edge", lambda x: bool(x), "a non-empty namespace URI")
    # Healthy goes false when no result or heartbeat arrived for this long (PLC fail-safe).
    stale_s: float = _f(3.0, _pos, "positive (seconds)")
    # Security: Basic256Sha256 Sign & Encrypt with the server certificate and key from files; clients'
    # certificates must be in trusted_clients (a folder of DER/PEM files). Anonymous access off unless set.
    security: str = _f("sign_encrypt", *oneof("none", "sign_encrypt"))
    certificate: str | None = _f(None)
    private_key: str | None = _f(None)
    trusted_clients: str | None = _f(None)
    allow_anonymous: bool = _f(False)
    # Trigger method: forwarded to the daemon's control socket.
    allow_trigger: bool = _f(True)


@dataclass(frozen=True)
class ModbusSection:
    """``masf-edge gateway modbus``: a Modbus TCP server with a holding-register map per camera."""

    enabled: bool = _f(False)
    host: str = _f("127.0.0.1")
    port: int = _f(5020, lambda x: 0 <= x <= 65535, "a TCP port")
    unit_id: int = _f(1, lambda x: 0 <= x <= 247, "a Modbus unit id (0..247)")
    stale_s: float = _f(3.0, _pos, "positive (seconds)")


@dataclass(frozen=True)
class PageSection:
    """``masf-edge page``: the operator page (a local web server that subscribes to the daemon)."""

    enabled: bool = _f(False)
    host: str = _f("127.0.0.1")
    port: int = _f(8080, lambda x: 0 <= x <= 65535, "a TCP port (0: any free one)")
    gallery: int = _f(24, _pos, "a positive int (last FAIL / UNKNOWN shown)")
    # Pause / resume and threshold changes from the page: off unless enabled, and then only with the token
    # from this file (sent as an Authorization: Bearer header).
    allow_control: bool = _f(False)
    token_file: str | None = _f(None)


@dataclass(frozen=True)
class GatewaysSection:
    opcua: OpcUaSection = field(default_factory=OpcUaSection)
    modbus: ModbusSection = field(default_factory=ModbusSection)


@dataclass(frozen=True)
class EdgeConfig:
    """A production line: see ``configs/edge/demo.yaml`` for a commented example."""

    line: str = _f("line1", _name, _NAME_RULE)
    cameras: list[CameraSection] = field(
        default_factory=list,
        metadata={"check": lambda v: len(v) > 0, "rule": "a non-empty list of cameras"},
    )
    publish: PublishSection = field(default_factory=PublishSection)
    control: ControlSection = field(default_factory=ControlSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    evidence: EvidenceSection = field(default_factory=EvidenceSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    gateways: GatewaysSection = field(default_factory=GatewaysSection)
    page: PageSection = field(default_factory=PageSection)
    store: StoreSection = field(default_factory=StoreSection)

    def camera(self, name: str) -> CameraSection:
        """The camera called ``name``.

        Raises:
            KeyError: no such camera.
        """
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)


def _resolve(path: str | None, base: Path | None) -> str | None:
    if path is None or base is None or "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _check_camera(
    cam: CameraSection, i: int, src: str, base: Path | None, store: str | None = None
) -> CameraSection:
    where = f"{src}: cameras[{i}]"
    if cam.bundle.startswith("store:"):
        part = cam.bundle[len("store:") :]
        if store is None:
            raise ConfigError(f"{where}.bundle {cam.bundle!r} needs store.dir (the model store)")
        if not _name(part):
            raise ConfigError(f"{where}.bundle: {part!r} is not a valid part name ({_NAME_RULE})")
        cam = replace(cam, bundle=str(Path(store) / "parts" / part / "current"))
    s = cam.source
    if s.kind == "folder" and not s.path:
        raise ConfigError(f"{where}.source.path is required for a folder source")
    if s.kind == "opencv" and not s.uri:
        raise ConfigError(f"{where}.source.uri is required for an opencv source (device index, file or URL)")
    if s.kind == "genicam" and not s.cti:
        raise ConfigError(f"{where}.source.cti needs at least one GenTL producer (.cti) file")
    if s.step and (s.kind != "folder" or cam.mode != "triggered"):
        raise ConfigError(f"{where}.source.step works with a folder source in triggered mode only")
    source = replace(s, path=_resolve(s.path, base), cti=[str(_resolve(c, base)) for c in s.cti])
    if s.kind == "opencv" and s.uri and not s.uri.isdigit() and "://" not in s.uri and "!" not in s.uri:
        source = replace(source, uri=_resolve(s.uri, base))
    return replace(cam, source=source, bundle=str(_resolve(cam.bundle, base)))


def config_from_dict(data: Any, source: str = "edge config", base: Path | None = None) -> EdgeConfig:
    """Validate a parsed document into an :class:`EdgeConfig` (paths resolved against ``base``).

    Raises:
        ConfigError: naming ``source`` and the field.
    """
    cfg = build(EdgeConfig, data, source)
    names = [c.name for c in cfg.cameras]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: camera name {dup[0]!r} is used twice: camera names must be unique")
    if cfg.pipeline.reconnect_max_s < cfg.pipeline.reconnect_min_s:
        raise ConfigError(f"{source}: pipeline.reconnect_max_s must be >= pipeline.reconnect_min_s")
    sec = cfg.security
    if sec.curve and not sec.server_secret_key:
        raise ConfigError(
            f"{source}: security.curve needs security.server_secret_key (make one: masf-edge keys)"
        )
    if sec.require_signed_bundles and not sec.trusted_keys:
        raise ConfigError(
            f"{source}: security.require_signed_bundles needs security.trusted_keys (PEM files)"
        )
    if cfg.publish.address == cfg.control.address:
        raise ConfigError(f"{source}: publish.address and control.address must differ")
    store = replace(
        cfg.store,
        dir=_resolve(cfg.store.dir, base),
        train_config=_resolve(cfg.store.train_config, base),
        signing_key=_resolve(cfg.store.signing_key, base),
    )
    cameras = [_check_camera(c, i, source, base, store.dir) for i, c in enumerate(cfg.cameras)]
    security = replace(
        sec,
        server_secret_key=_resolve(sec.server_secret_key, base),
        client_public_keys=_resolve(sec.client_public_keys, base),
        server_public_key=_resolve(sec.server_public_key, base),
        client_secret_key=_resolve(sec.client_secret_key, base),
        trusted_keys=[str(_resolve(k, base)) for k in sec.trusted_keys],
    )
    evidence = replace(cfg.evidence, dir=_resolve(cfg.evidence.dir, base))
    ua = cfg.gateways.opcua
    ua = replace(
        ua,
        certificate=_resolve(ua.certificate, base),
        private_key=_resolve(ua.private_key, base),
        trusted_clients=_resolve(ua.trusted_clients, base),
    )
    if ua.enabled and ua.security == "sign_encrypt" and not (ua.certificate and ua.private_key):
        raise ConfigError(
            f"{source}: gateways.opcua.security sign_encrypt needs gateways.opcua.certificate and "
            "private_key (make a pair: masf-edge gateway opcua --make-cert DIR)"
        )
    page = replace(cfg.page, token_file=_resolve(cfg.page.token_file, base))
    if page.allow_control and not page.token_file:
        raise ConfigError(f"{source}: page.allow_control needs page.token_file (a file holding the token)")
    gateways = replace(cfg.gateways, opcua=ua)
    return replace(
        cfg, cameras=cameras, security=security, evidence=evidence, gateways=gateways, page=page, store=store
    )


def load_edge_config(
    path: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None
) -> EdgeConfig:
    """Load ``path`` (YAML), apply ``--set`` overrides and validate; relative paths are resolved against
    the file's folder.

    Raises:
        ConfigError: missing or unreadable file, bad YAML, or an invalid field (named).
    """
    path = Path(path)
    raw = load_yaml(path, EdgeConfig, overrides)
    return config_from_dict(to_dict(raw), str(path), path.resolve().parent)
