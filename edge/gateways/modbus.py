"""``masf-edge gateway modbus``: a Modbus TCP server (pymodbus) with a register block per camera.

    masf-edge gateway modbus --config /etc/masf-edge/line1.yaml

Camera ``i`` (its position in ``cameras``, from 0) has a block of :data:`BLOCK_SIZE` registers at address
``i * 100`` (0-based protocol addresses; PLC documentation that counts holding registers from 40001 adds
40001). The same registers answer *Read Holding Registers* (function 3) and *Read Input Registers*
(function 4); they are read-only (writes get exception 2, illegal data address).

======  =====================  =======================================================================
Offset  Name                   Content
======  =====================  =======================================================================
0       verdict                0 UNKNOWN, 1 PASS, 2 FAIL
1-2     score                  float32 (IEEE 754), NaN when the daemon had none
3-4     threshold              float32
5-6     sequence               uint32: the daemon's result number (1 after each daemon start)
7       heartbeat              uint16 counter, +1 every second while the daemon is heard (wraps)
8       healthy                1: the last verdict may be trusted; 0: stale, daemon gone, camera down
9       region_count           uint16 (saturates at 65535)
10-11   result_time            uint32: when the daemon published the result, epoch seconds (UTC)
12      result_time_ms         uint16: the milliseconds of result_time (0..999)
13      state                  0 unreachable, 1 starting, 2 running, 3 paused, 4 down
14      reason                 why UNKNOWN: 0 none, 1.. as edge.gateways.common.REASON_CODES, 255 other
15-99   reserved               0
======  =====================  =======================================================================

Word order of 32-bit values: **big-endian, high word first** (register n holds bits 31..16, n+1 bits
15..0; each register is big-endian on the wire, so the four bytes in address order are the big-endian
value, "ABCD"). Example: score 4.812 is 0x4099 FBE7: register 1 = 0x4099, register 2 = 0xFBE7.

Atomicity: a result and the status are written into a camera's block in one step of the server's event
loop, and one request is served in one step, so **read the block (at least registers 0..14) in one
request** and its values belong together. Registers read in separate requests may mix two results.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import socket
import struct
from typing import TYPE_CHECKING, Any

from edge.config import EdgeConfig, load_edge_config
from edge.errors import EdgeError

if TYPE_CHECKING:
    from edge.gateways.common import CameraStatus, FeedBridge, ResultValues

__all__ = [
    "BLOCK_SIZE",
    "BLOCK_STRIDE",
    "OFFSETS",
    "ModbusGateway",
    "add_arguments",
    "decode_block",
    "encode_block",
    "run",
]

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF

BLOCK_STRIDE = 100  # camera i's block starts at register i * BLOCK_STRIDE
BLOCK_SIZE = 15  # registers of a block in use (offsets 0..14); the rest of the stride reads 0
OFFSETS = {
    "verdict": 0,
    "score": 1,
    "threshold": 3,
    "sequence": 5,
    "heartbeat": 7,
    "healthy": 8,
    "region_count": 9,
    "result_time": 10,
    "result_time_ms": 12,
    "state": 13,
    "reason": 14,
}
_MAX_CAMERAS = 65536 // BLOCK_STRIDE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond --config / --set / --log-level: the settings are gateways.modbus in the config."""


def run(args: argparse.Namespace) -> int:
    """``masf-edge gateway modbus``: serve until SIGTERM / SIGINT.

    Raises:
        EdgeError: bad config, port in use (one line).
    """
    from edge.gateways.common import library_log_level, run_gateway

    level = library_log_level(getattr(args, "log_level", "info"))
    # pymodbus warns and then raises for a port in use: the gateway's one-line error says it
    logging.getLogger("pymodbus").setLevel(level if level == logging.DEBUG else logging.ERROR)
    if not args.config:
        raise EdgeError("masf-edge gateway modbus needs --config (the line config the daemon runs with)")
    cfg = load_edge_config(args.config, args.set)
    mb = cfg.gateways.modbus
    if not mb.enabled:
        raise EdgeError(
            f"{args.config}: gateways.modbus.enabled is false: set it to true to serve this line over Modbus"
        )
    if mb.port == 0:
        raise EdgeError("gateways.modbus.port 0: a PLC needs a fixed port (502 is Modbus TCP's own)")
    if len(cfg.cameras) > _MAX_CAMERAS:
        raise EdgeError(f"the Modbus map holds {_MAX_CAMERAS} cameras, the line has {len(cfg.cameras)}")
    return run_gateway(lambda bridge: ModbusGateway(cfg, bridge), cfg, mb.stale_s)


# ------------------------------------------------------------------------------------------ the map


def _u32(value: int) -> list[int]:
    value &= _U32
    return [value >> 16, value & 0xFFFF]


def _f32(value: float) -> list[int]:
    try:
        raw = struct.pack(">f", value)
    except OverflowError:  # beyond float32: infinity of the same sign
        raw = struct.pack(">f", math.copysign(math.inf, value))
    hi, lo = struct.unpack(">HH", raw)
    return [hi, lo]


def encode_block(result: ResultValues | None, status: CameraStatus | None) -> list[int]:
    """The :data:`BLOCK_SIZE` registers of one camera (before any result: verdict UNKNOWN, score NaN)."""
    regs = [0] * BLOCK_SIZE
    if result is not None:
        published = max(0.0, result.published)
        secs = int(published)
        regs[0] = result.verdict_code
        regs[1:3] = _f32(result.score)
        regs[3:5] = _f32(result.threshold)
        regs[5:7] = _u32(result.seq)
        regs[9] = min(result.region_count, 0xFFFF)
        regs[10:12] = _u32(secs)
        regs[12] = min(999, round((published - secs) * 1000))
        regs[14] = result.reason_code
    else:
        regs[1:3] = _f32(math.nan)
        regs[3:5] = _f32(math.nan)
    if status is not None:
        regs[7] = status.heartbeat & 0xFFFF
        regs[8] = int(status.healthy)
        regs[13] = status.state_code
    return regs


def decode_block(regs: list[int]) -> dict[str, Any]:
    """The values of a block read from offset 0 (at least :data:`BLOCK_SIZE` registers): the reference
    decoding for PLC programmers (``docs/plc.md``)."""

    def u32(i: int) -> int:
        return (regs[i] << 16) | regs[i + 1]

    def f32(i: int) -> float:
        return float(struct.unpack(">f", struct.pack(">HH", regs[i], regs[i + 1]))[0])

    return {
        "verdict": ("UNKNOWN", "PASS", "FAIL")[regs[0]] if regs[0] <= 2 else f"code {regs[0]}",
        "score": f32(1),
        "threshold": f32(3),
        "sequence": u32(5),
        "heartbeat": regs[7],
        "healthy": bool(regs[8]),
        "region_count": regs[9],
        "result_time": u32(10) + regs[12] / 1000.0,
        "state": regs[13],
        "reason": regs[14],
    }


# ------------------------------------------------------------------------------------------ the server


class ModbusGateway:
    """The Modbus TCP server of one line, fed by a :class:`~edge.gateways.common.FeedBridge`.

    The register image is a list owned by the event loop's thread; a read request copies the requested
    range from it in one step (the device's ``action``), and updates replace a camera's block in one slice
    assignment, so one request never sees half of an update.
    """

    name = "Modbus"

    def __init__(self, cfg: EdgeConfig, bridge: FeedBridge) -> None:
        self.cfg = cfg
        self.mb = cfg.gateways.modbus
        self.bridge = bridge
        self.index = {cam.name: i for i, cam in enumerate(cfg.cameras)}
        self.image = [0] * (BLOCK_STRIDE * len(cfg.cameras))
        self._results: dict[str, ResultValues | None] = dict.fromkeys(self.index)
        self._status: dict[str, CameraStatus | None] = dict.fromkeys(self.index)
        for name in self.index:
            self._update(name)
        self.server: Any = None

    def _update(self, camera: str) -> None:
        base = self.index[camera] * BLOCK_STRIDE
        self.image[base : base + BLOCK_SIZE] = encode_block(self._results[camera], self._status[camera])

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> Any:
        from pymodbus.constants import ExcCodes

        if values is not None:
            return ExcCodes.ILLEGAL_ADDRESS  # read-only map (the registers are marked read-only as well)
        off = address - start_address
        registers[off : off + count] = self.image[off : off + count]
        return None

    async def start(self) -> str:
        try:
            from pymodbus.server import ModbusTcpServer
            from pymodbus.simulator import DataType, SimData, SimDevice
        except ImportError as err:
            raise EdgeError(f"pymodbus 3.16.1 or newer (SimDevice) is needed: {err}") from None

        device = SimDevice(
            id=self.mb.unit_id,
            simdata=[SimData(0, count=len(self.image), values=0, datatype=DataType.REGISTERS, readonly=True)],
            action=self._action,
        )
        self.server = ModbusTcpServer(device, address=(self.mb.host, self.mb.port))
        try:
            await self.server.serve_forever(background=True)
        except RuntimeError:
            why = _bind_error(self.mb.host, self.mb.port)
            raise EdgeError(
                f"gateways.modbus: cannot listen on {self.mb.host}:{self.mb.port} ({why})"
            ) from None
        unit = "any unit id" if self.mb.unit_id == 0 else f"unit id {self.mb.unit_id}"
        return (
            f"modbus tcp {self.mb.host}:{self.mb.port} ({unit}, {len(self.index)} camera block(s) of "
            f"{BLOCK_SIZE} registers every {BLOCK_STRIDE})"
        )

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.shutdown()

    async def write_results(self, results: dict[str, ResultValues]) -> None:
        for name, values in results.items():
            self._results[name] = values
            self._update(name)

    async def write_status(self, status: dict[str, CameraStatus]) -> None:
        for name, st in status.items():
            if st != self._status[name]:
                self._status[name] = st
                self._update(name)


def _bind_error(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound (pymodbus only says that it failed)."""
    try:
        with socket.create_server((host, port)):
            return "it could not be bound"
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return "the port is in use: is another gateway or Modbus server running?"
        return e.strerror or str(e)
