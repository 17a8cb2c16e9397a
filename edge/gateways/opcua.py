"""``masf-edge gateway opcua``: an OPC UA server (asyncua) that mirrors one line's results for PLCs.

    masf-edge gateway opcua --config /etc/masf-edge/line1.yaml
    masf-edge gateway opcua --make-cert DIR [--name server] [--hostname HOST ...] [--days 1825]
    masf-edge gateway opcua --make-cert DIR --client --name plc1

Information model (namespace ``gateways.opcua.namespace``, string node ids; ``docs/plc.md``)::

    Objects/<line>                       Object     <line>
        Healthy                          Boolean    <line>.Healthy          every camera healthy
        <camera>                         Object     <line>.<camera>
            Result                       InspectionResult (structure): one result, read atomically
            SequenceBegin                UInt32     written FIRST for each result
            Verdict                      Verdict (enumeration UNKNOWN 0, PASS 1, FAIL 2)
            Score, Threshold             Double     (Score NaN when the daemon sent none)
            AcquisitionId, ModelVersion  String
            RegionCount                  UInt32
            LastResultTime               DateTime   when the daemon published the result
            Reason                       String     why UNKNOWN ("" for PASS / FAIL)
            Sequence                     UInt32     written LAST for each result
            Heartbeat                    UInt32     +1 every second while the daemon is heard
            Healthy                      Boolean    a message within stale_s and a running/paused camera
            State                        String     unreachable, starting, running, paused, down
            Trigger()                    Method     -> String: forwards a software trigger to the daemon

Consistency: ``Result`` holds every field of one result in one value. The plain variables of a result are
written in the order ``SequenceBegin``, the fields, ``Result``, ``Sequence``: a client that reads
``Sequence``, then the fields, then ``SequenceBegin`` and gets the same number twice has read one result
(a seqlock; ``docs/plc.md``).

Security (``gateways.opcua.security: sign_encrypt``, the default): one endpoint, Basic256Sha256 Sign &
Encrypt, with the server certificate and key from files; a client's application certificate must be in
``trusted_clients`` (and valid: time, application URI, key usage), and the user identity is an X.509
certificate from that folder too, unless ``allow_anonymous`` also accepts the anonymous user token (the
channel still needs a trusted certificate). ``security: none`` is for test benches only and needs
``allow_anonymous: true``. The server's application URI is the one in its certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

from edge.config import EdgeConfig, OpcUaSection, load_edge_config
from edge.errors import EdgeError

if TYPE_CHECKING:
    from asyncua import Node, Server, ua
    from cryptography import x509

    from edge.gateways.common import CameraStatus, FeedBridge, ResultValues
    from edge.subscriber import ControlClient

__all__ = ["OpcUaGateway", "add_arguments", "make_cert", "run"]

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF

VERDICT_NAMES = ("UNKNOWN", "PASS", "FAIL")  # enumeration values 0, 1, 2 (edge.gateways.common)
_DEFAULT_DAYS = 1825
# Plain variables of a camera, in the order each result writes them (SequenceBegin first, Sequence last).
RESULT_FIELDS = (
    "Verdict",
    "Score",
    "Threshold",
    "AcquisitionId",
    "ModelVersion",
    "RegionCount",
    "LastResultTime",
    "Reason",
)
_DESCRIPTIONS = {
    "Result": "The last result as one structure (all fields of one part): read this when you can.",
    "SequenceBegin": (
        "Written first for each result: read Sequence, the fields, then this one; equal: one result."
    ),
    "Verdict": "UNKNOWN 0, PASS 1, FAIL 2; treat anything but PASS as not-PASS.",
    "Score": "The image anomaly score (NaN when the daemon had none: UNKNOWN).",
    "Threshold": "The threshold the verdict was decided with.",
    "AcquisitionId": "The camera's id of the acquisition (frame id, file name, counter).",
    "ModelVersion": "The model version of the loaded bundle (empty without a model).",
    "RegionCount": "Anomalous regions found in the part.",
    "LastResultTime": "When the daemon published the result (UTC).",
    "Reason": "Why the verdict is UNKNOWN (empty for PASS and FAIL).",
    "Sequence": "The daemon's result number, written last for each result (1 after a daemon start).",
    "Heartbeat": "Grows by one every second while the daemon is heard.",
    "Healthy": "The last verdict may be trusted: the daemon was heard within stale_s and the camera runs.",
    "State": "unreachable, starting, running, paused or down.",
}


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masf-edge gateway opcua`` beyond --config / --set / --log-level."""
    parser.add_argument(
        "--make-cert",
        metavar="DIR",
        help="write a self-signed certificate (NAME_cert.der) and private key (NAME_key.pem) to DIR and exit",
    )
    parser.add_argument(
        "--client",
        action="store_true",
        help="with --make-cert: a client pair (a PLC or a test client) instead of the server's",
    )
    parser.add_argument("--name", help="with --make-cert: the file stem and common name (server / client)")
    parser.add_argument(
        "--uri",
        help="with --make-cert: the application URI (default urn:masf-edge:opcua:HOST, client "
        "urn:masf-edge:client:NAME)",
    )
    parser.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="HOST",
        help="with --make-cert: a DNS name or IP address PLCs use for this host (repeat; its own name and "
        "localhost are always included)",
    )
    parser.add_argument("--days", type=int, default=_DEFAULT_DAYS, help="with --make-cert: validity in days")
    parser.add_argument("--force", action="store_true", help="with --make-cert: overwrite existing files")


def run(args: argparse.Namespace) -> int:
    """``masf-edge gateway opcua``: make a certificate pair, or serve until SIGTERM / SIGINT.

    Raises:
        EdgeError: bad config, missing certificates, endpoint in use (one line).
    """
    from edge.gateways.common import run_gateway

    _quiet_libraries(getattr(args, "log_level", "info"))
    if args.make_cert:
        hosts = list(args.hostname)
        if args.config and not hosts:
            host = urlparse(load_edge_config(args.config, args.set).gateways.opcua.endpoint).hostname
            if host and host not in ("0.0.0.0", "::"):
                hosts.append(host)
        name = args.name or ("client" if args.client else "server")
        cert, key, uri = make_cert(args.make_cert, name, args.client, args.uri, hosts, args.days, args.force)
        print(f"certificate {cert}\nprivate key {key} (keep it secret)\napplication URI {uri}")
        if args.client:
            print("trust it: copy the certificate into the folder of gateways.opcua.trusted_clients")
        else:
            print("use it: gateways.opcua.certificate and gateways.opcua.private_key")
        return 0
    if not args.config:
        raise EdgeError("masf-edge gateway opcua needs --config (the line config the daemon runs with)")
    cfg = load_edge_config(args.config, args.set)
    ua_cfg = cfg.gateways.opcua
    if not ua_cfg.enabled:
        raise EdgeError(
            f"{args.config}: gateways.opcua.enabled is false: set it to true to serve this line over OPC UA"
        )
    check_security_config(ua_cfg)
    return run_gateway(lambda bridge: OpcUaGateway(cfg, bridge), cfg, ua_cfg.stale_s)


def _quiet_libraries(level: str) -> None:
    from edge.gateways.common import library_log_level

    logging.getLogger("asyncua").setLevel(library_log_level(level))
    # asyncua's trust store logs a traceback for every refused certificate; the gateway logs one line
    logging.getLogger("asyncuagds.validate").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------------------- certificates


def make_cert(
    out_dir: str | Path,
    name: str = "server",
    client: bool = False,
    uri: str | None = None,
    hostnames: list[str] | None = None,
    days: int = _DEFAULT_DAYS,
    force: bool = False,
) -> tuple[Path, Path, str]:
    """Write a self-signed OPC UA application certificate (DER) and its RSA-2048 key (PEM, mode 0600).

    Args:
        out_dir: the folder (made if missing).
        name: file stem and common name: ``NAME_cert.der``, ``NAME_key.pem``.
        client: a client certificate (extended key usage clientAuth) instead of a server's (serverAuth).
        uri: the application URI (subject alternative name); default ``urn:masf-edge:opcua:<host>`` or
            ``urn:masf-edge:client:<name>``. A client must announce this URI when it connects.
        hostnames: more DNS names / IP addresses for the certificate (this host's name and localhost are
            always in it).
        days: validity.
        force: overwrite existing files.

    Returns:
        ``(certificate_path, key_path, application_uri)``.

    Raises:
        EdgeError: a bad name, existing files without ``force``, a folder that cannot be written.
    """
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not name or "/" in name or name.startswith("."):
        raise EdgeError(f"certificate name {name!r} must be a plain file stem such as 'server' or 'plc1'")
    if days <= 0:
        raise EdgeError(f"--days must be positive, got {days}")
    out = Path(out_dir)
    cert_path, key_path = out / f"{name}_cert.der", out / f"{name}_key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise EdgeError(f"{cert_path} or {key_path} already exists: pick another --name or pass --force")
    host = socket.gethostname()
    uri = uri or (f"urn:masf-edge:client:{name}" if client else f"urn:masf-edge:opcua:{host}")
    names = list(dict.fromkeys([host, "localhost", *(hostnames or [])]))
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for h in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key, name, {"organizationName": "MASF Edge"}, alt, [usage], days=days
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert.public_bytes(Encoding.DER))
        with contextlib.suppress(FileNotFoundError):
            key_path.unlink()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(dump_private_key_as_pem(key))
    except OSError as e:
        raise EdgeError(f"cannot write the certificate to {out}: {e.strerror or e}") from None
    return cert_path, key_path, uri


def check_security_config(ua_cfg: OpcUaSection) -> None:
    """The security settings make sense and their files exist.

    Raises:
        EdgeError: naming the field and what to do.
    """
    if ua_cfg.security == "none":
        if not ua_cfg.allow_anonymous:
            raise EdgeError(
                "gateways.opcua.security none admits anonymous clients only: set "
                "gateways.opcua.allow_anonymous true (test benches), or use security sign_encrypt"
            )
        return
    hint = "make a pair: masf-edge gateway opcua --make-cert DIR"
    for field, path in (("certificate", ua_cfg.certificate), ("private_key", ua_cfg.private_key)):
        if not path:
            raise EdgeError(f"gateways.opcua.security sign_encrypt needs gateways.opcua.{field} ({hint})")
        if not Path(path).is_file():
            raise EdgeError(f"gateways.opcua.{field} {path}: no such file ({hint})")
    if not ua_cfg.trusted_clients:
        raise EdgeError(
            "gateways.opcua.security sign_encrypt needs gateways.opcua.trusted_clients: a folder with the "
            "certificates (DER or PEM) of the PLCs and clients allowed in"
        )
    if not Path(ua_cfg.trusted_clients).is_dir():
        raise EdgeError(f"gateways.opcua.trusted_clients {ua_cfg.trusted_clients}: no such folder")


def _ua() -> Any:
    """asyncua's ``ua`` module, untyped: its NewType aliases (Int32, UInt32, DateTime...) would need a cast
    at every constructor call."""
    from asyncua import ua

    return ua


def _application_uri(cert: x509.Certificate) -> str | None:
    from cryptography import x509

    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    return None


def _subject(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


# ------------------------------------------------------------------------------------------ the server


@dataclass
class _CameraNodes:
    nodes: dict[str, ua.NodeId]  # variable name -> node id
    last_status: CameraStatus | None = None


class OpcUaGateway:
    """The OPC UA server of one line, fed by a :class:`~edge.gateways.common.FeedBridge`.

    Args:
        cfg: the line config (``gateways.opcua``).
        bridge: the line's feed (its control client forwards ``Trigger``).
    """

    name = "OPC UA"

    def __init__(self, cfg: EdgeConfig, bridge: FeedBridge) -> None:
        self.cfg = cfg
        self.ua_cfg = cfg.gateways.opcua
        self.bridge = bridge
        self.server: Server | None = None
        self.namespace_index = 0
        self._cameras: dict[str, _CameraNodes] = {}
        self._line_healthy: ua.NodeId | None = None
        self._line_healthy_value: bool | None = None
        self._result_cls: Any = None
        self._verdict_enum: Any = None
        self._started = False
        self._control: ControlClient | None = None
        self._control_lock = threading.Lock()

    # -------------------------------------------------------------------------------- start / stop

    async def start(self) -> str:
        from asyncua import Server

        user_manager = None
        trust = None
        if self.ua_cfg.security == "sign_encrypt":
            from asyncua.crypto.truststore import TrustStore

            trust = TrustStore([Path(str(self.ua_cfg.trusted_clients))], [])
            try:
                await trust.load()
            except (OSError, ValueError) as e:
                raise EdgeError(
                    f"gateways.opcua.trusted_clients {self.ua_cfg.trusted_clients}: cannot read a "
                    f"certificate ({e})"
                ) from None
            user_manager = _TrustedUsers(trust, self.ua_cfg.allow_anonymous)
        server = Server(user_manager=cast(Any, user_manager))
        self.server = server
        await server.init()
        server.set_endpoint(self.ua_cfg.endpoint)
        server.set_server_name(f"MASF Edge OPC UA gateway ({self.cfg.line})")
        await self._setup_security(server, trust)
        await self._build_model(server)
        url = urlparse(self.ua_cfg.endpoint)
        # asyncua logs a traceback before it raises; the gateway's error is one line
        start_log = logging.getLogger("asyncua.server.server")
        level = start_log.level
        start_log.setLevel(logging.CRITICAL)
        try:
            await server.start()
        except OSError as e:
            raise EdgeError(
                f"gateways.opcua.endpoint {self.ua_cfg.endpoint}: cannot listen on {url.hostname}:{url.port} "
                f"({e.strerror or e}): is another gateway running, or is the address wrong?"
            ) from None
        finally:
            start_log.setLevel(level)
        self._started = True
        return f"{self.ua_cfg.endpoint} (security {self.ua_cfg.security}, namespace {self.ua_cfg.namespace})"

    async def _setup_security(self, server: Server, trust: Any) -> None:
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        ua = _ua()

        c = self.ua_cfg
        if c.security == "none":
            log.warning("OPC UA security is OFF (security none, anonymous): for test benches only")
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
            await server.set_application_uri(f"urn:masf-edge:opcua:{socket.gethostname()}")
            return
        try:
            await server.load_certificate(str(c.certificate))
        except (OSError, ValueError) as e:
            raise EdgeError(
                f"gateways.opcua.certificate {c.certificate}: not a DER/PEM certificate ({e})"
            ) from None
        try:
            await server.load_private_key(str(c.private_key))
        except (OSError, ValueError, TypeError) as e:
            raise EdgeError(
                f"gateways.opcua.private_key {c.private_key}: not an unencrypted PEM/DER private key ({e})"
            ) from None
        cert = server.iserver.certificate
        uri = _application_uri(cert) if cert is not None else None
        if not uri:
            raise EdgeError(
                f"gateways.opcua.certificate {c.certificate} has no application URI (subject alternative "
                "name): make one with masf-edge gateway opcua --make-cert DIR"
            )
        await server.set_application_uri(uri)
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        tokens: list[type] = [ua.X509IdentityToken]
        if c.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, trust
        )

        async def validate(cert: x509.Certificate, app: Any) -> None:
            try:
                await validator.validate(cert, app)
            except Exception as err:
                code = getattr(err, "code", None)
                name = ua.StatusCode(code).name if isinstance(code, int) else type(err).__name__
                hints = {
                    "BadCertificateUntrusted": f"to let it in, copy its certificate into {c.trusted_clients}",
                    "BadCertificateTimeInvalid": "the certificate has expired or is not valid yet",
                    "BadCertificateUriInvalid": "the client's application URI differs from its certificate's",
                    "BadCertificateUseNotAllowed": "the certificate lacks the key usages of an OPC UA client",
                }
                log.warning(
                    "refused an OPC UA client: %s (certificate %s, application %s): %s",
                    name,
                    _subject(cert),
                    app.ApplicationUri,
                    hints.get(name, "its certificate is not valid"),
                )
                raise

        server.set_certificate_validator(validate)

    async def stop(self) -> None:
        if self.server is not None and self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await self.server.stop()
        with self._control_lock:
            if self._control is not None:
                self._control.close()
                self._control = None

    # -------------------------------------------------------------------------------- address space

    async def _build_model(self, server: Server) -> None:
        from asyncua.common.structures104 import new_enum, new_struct, new_struct_field

        ua = _ua()

        idx = await server.register_namespace(self.ua_cfg.namespace)
        self.namespace_index = idx

        def nid(name: str) -> Any:
            return ua.NodeId(name, idx)

        verdict_type = await new_enum(server, nid("Verdict"), "Verdict", list(VERDICT_NAMES))
        # EnumStrings as well, for clients that read enumerations the pre-1.04 way
        await verdict_type.add_property(
            nid("Verdict.EnumStrings"),
            ua.QualifiedName("EnumStrings", 0),
            ua.Variant([ua.LocalizedText(n) for n in VERDICT_NAMES], ua.VariantType.LocalizedText),
        )
        fields = [
            new_struct_field("Sequence", ua.VariantType.UInt32),
            new_struct_field("Verdict", verdict_type),
            new_struct_field("Score", ua.VariantType.Double),
            new_struct_field("Threshold", ua.VariantType.Double),
            new_struct_field("AcquisitionId", ua.VariantType.String),
            new_struct_field("ModelVersion", ua.VariantType.String),
            new_struct_field("RegionCount", ua.VariantType.UInt32),
            new_struct_field("LastResultTime", ua.VariantType.DateTime),
            new_struct_field("Reason", ua.VariantType.String),
        ]
        result_type, _ = await new_struct(server, nid("InspectionResult"), "InspectionResult", fields)
        await server.load_data_type_definitions()
        self._result_cls = getattr(ua, "InspectionResult")  # noqa: B009 (made by load_data_type_definitions)
        self._verdict_enum = getattr(ua, "Verdict")  # noqa: B009

        line = self.cfg.line
        line_obj = await server.nodes.objects.add_object(nid(line), ua.QualifiedName(line, idx))
        self._line_healthy = (
            await self._variable(line_obj, f"{line}.Healthy", "Healthy", False, ua.VariantType.Boolean)
        ).nodeid
        await self._describe(line_obj.nodeid, f"MASF Edge line {line}")
        for cam in self.cfg.cameras:
            base = f"{line}.{cam.name}"
            obj = await line_obj.add_object(nid(base), ua.QualifiedName(cam.name, idx))
            await self._describe(obj.nodeid, f"Camera {cam.name} of line {line}")
            nodes: dict[str, Any] = {}
            v = await obj.add_variable(
                nid(f"{base}.Result"),
                ua.QualifiedName("Result", idx),
                ua.Variant(self._empty_result(), ua.VariantType.ExtensionObject),
                datatype=result_type.nodeid,
            )
            nodes["Result"] = v.nodeid
            init: list[tuple[str, Any, Any, Any]] = [
                ("SequenceBegin", 0, ua.VariantType.UInt32, None),
                ("Verdict", 0, ua.VariantType.Int32, verdict_type.nodeid),
                ("Score", math.nan, ua.VariantType.Double, None),
                ("Threshold", math.nan, ua.VariantType.Double, None),
                ("AcquisitionId", "", ua.VariantType.String, None),
                ("ModelVersion", "", ua.VariantType.String, None),
                ("RegionCount", 0, ua.VariantType.UInt32, None),
                ("LastResultTime", ua.get_win_epoch(), ua.VariantType.DateTime, None),
                ("Reason", "", ua.VariantType.String, None),
                ("Sequence", 0, ua.VariantType.UInt32, None),
                ("Heartbeat", 0, ua.VariantType.UInt32, None),
                ("Healthy", False, ua.VariantType.Boolean, None),
                ("State", "unreachable", ua.VariantType.String, None),
            ]
            for name, value, vtype, dtype in init:
                node = await self._variable(obj, f"{base}.{name}", name, value, vtype, dtype)
                nodes[name] = node.nodeid
            for name, node_id in nodes.items():
                await self._describe(node_id, _DESCRIPTIONS[name])
            await obj.add_method(
                nid(f"{base}.Trigger"),
                ua.QualifiedName("Trigger", idx),
                self._trigger_handler(cam.name),
                [],
                [
                    ua.Argument(
                        Name="Trigger",
                        DataType=ua.NodeId(ua.ObjectIds.String),
                        ValueRank=-1,
                        Description=ua.LocalizedText(
                            "queued, or camera_down (that part is published UNKNOWN)"
                        ),
                    )
                ],
            )
            self._cameras[cam.name] = _CameraNodes(nodes)

    async def _variable(
        self,
        parent: Node,
        node_id: str,
        name: str,
        value: Any,
        vtype: ua.VariantType,
        datatype: ua.NodeId | None = None,
    ) -> Node:
        ua = _ua()

        idx = self.namespace_index
        return await parent.add_variable(
            ua.NodeId(node_id, idx), ua.QualifiedName(name, idx), ua.Variant(value, vtype), datatype=datatype
        )

    async def _describe(self, node_id: ua.NodeId, text: str) -> None:
        ua = _ua()

        assert self.server is not None
        await self.server.write_attribute_value(
            node_id, ua.DataValue(ua.Variant(ua.LocalizedText(text))), ua.AttributeIds.Description
        )

    def _empty_result(self) -> Any:
        ua = _ua()

        return self._result_cls(
            Sequence=0,
            Verdict=self._verdict_enum(0),
            Score=math.nan,
            Threshold=math.nan,
            AcquisitionId="",
            ModelVersion="",
            RegionCount=0,
            LastResultTime=ua.get_win_epoch(),
            Reason="",
        )

    # -------------------------------------------------------------------------------- values

    async def _write(self, node_id: ua.NodeId, value: Any, vtype: ua.VariantType, ts: datetime) -> None:
        ua = _ua()

        assert self.server is not None
        dv = ua.DataValue(
            Value=ua.Variant(value, vtype), SourceTimestamp=ts, ServerTimestamp=datetime.now(timezone.utc)
        )
        await self.server.write_attribute_value(node_id, dv)

    async def write_results(self, results: dict[str, ResultValues]) -> None:
        ua = _ua()

        vt = ua.VariantType
        for cam, r in results.items():
            n = self._cameras[cam].nodes
            ts = datetime.fromtimestamp(r.published, timezone.utc) if r.published > 0 else ua.get_win_epoch()
            seq = r.seq & _U32
            struct = self._result_cls(
                Sequence=seq,
                Verdict=self._verdict_enum(r.verdict_code),
                Score=r.score,
                Threshold=r.threshold,
                AcquisitionId=r.acquisition_id,
                ModelVersion=r.model_version,
                RegionCount=min(r.region_count, _U32),
                LastResultTime=ts,
                Reason=r.reason,
            )
            # the seqlock order: SequenceBegin, the fields, Result, Sequence
            await self._write(n["SequenceBegin"], seq, vt.UInt32, ts)
            await self._write(n["Verdict"], r.verdict_code, vt.Int32, ts)
            await self._write(n["Score"], r.score, vt.Double, ts)
            await self._write(n["Threshold"], r.threshold, vt.Double, ts)
            await self._write(n["AcquisitionId"], r.acquisition_id, vt.String, ts)
            await self._write(n["ModelVersion"], r.model_version, vt.String, ts)
            await self._write(n["RegionCount"], min(r.region_count, _U32), vt.UInt32, ts)
            await self._write(n["LastResultTime"], ts, vt.DateTime, ts)
            await self._write(n["Reason"], r.reason, vt.String, ts)
            await self._write(n["Result"], struct, vt.ExtensionObject, ts)
            await self._write(n["Sequence"], seq, vt.UInt32, ts)

    async def write_status(self, status: dict[str, CameraStatus]) -> None:
        ua = _ua()

        now = datetime.now(timezone.utc)
        vt = ua.VariantType
        for cam, st in status.items():
            c = self._cameras[cam]
            old = c.last_status
            if old is None or old.healthy != st.healthy:
                await self._write(c.nodes["Healthy"], st.healthy, vt.Boolean, now)
            if old is None or old.heartbeat != st.heartbeat:
                await self._write(c.nodes["Heartbeat"], st.heartbeat, vt.UInt32, now)
            if old is None or old.state != st.state:
                await self._write(c.nodes["State"], st.state, vt.String, now)
            c.last_status = st
        line_ok = bool(status) and all(s.healthy for s in status.values())
        if line_ok != self._line_healthy_value and self._line_healthy is not None:
            self._line_healthy_value = line_ok
            await self._write(self._line_healthy, line_ok, vt.Boolean, now)

    # -------------------------------------------------------------------------------- Trigger

    def _trigger_handler(self, camera: str) -> Any:
        ua = _ua()

        async def trigger(parent: Any) -> Any:
            if not self.ua_cfg.allow_trigger:
                log.warning("Trigger of camera %s refused: gateways.opcua.allow_trigger is false", camera)
                return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
            try:
                reply = await asyncio.to_thread(self._trigger_blocking, camera)
            except EdgeError as err:
                log.warning("Trigger of camera %s: %s", camera, err)
                return ua.StatusCode(ua.StatusCodes.BadCommunicationError)
            if not reply.get("ok"):
                log.warning("Trigger of camera %s refused by the daemon: %s", camera, reply.get("error"))
                return ua.StatusCode(ua.StatusCodes.BadInvalidState)
            return [ua.Variant(str(reply.get("trigger", "queued")), ua.VariantType.String)]

        return trigger

    def _trigger_blocking(self, camera: str) -> dict[str, Any]:
        with self._control_lock:
            if self._control is None:
                self._control = self.bridge.feed.control(timeout_s=2.0)
            return self._control.request("trigger", camera=camera)


class _TrustedUsers:
    """User identities: an X.509 user certificate that is in ``trusted_clients``; with ``allow_anonymous``
    also the anonymous token (the secure channel's certificate was validated already)."""

    def __init__(self, trust: Any, allow_anonymous: bool) -> None:
        self.trust = trust
        self.allow_anonymous = allow_anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> Any:
        from asyncua.crypto import uacrypto
        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None:
            return None  # user name tokens are not offered
        if certificate is None:
            return User(role=UserRole.User) if self.allow_anonymous else None
        try:
            cert = uacrypto.x509_from_der(certificate)
        except ValueError:
            cert = None
        if cert is None:
            log.warning("refused an OPC UA user token: its certificate cannot be read")
            return None
        if not self.trust.is_trusted(cert):
            log.warning("refused an OPC UA user certificate %s: not in trusted_clients", _subject(cert))
            return None
        return User(role=UserRole.User, name=_subject(cert))
