"""PLC gateways: separate processes that mirror one line's results for PLCs (``masf-edge gateway``).

* :mod:`edge.gateways.opcua`: an OPC UA server (asyncua) with an information model per line and camera,
  a ``Trigger`` method, Basic256Sha256 Sign & Encrypt with certificates from files
  (``masf-edge gateway opcua``).
* :mod:`edge.gateways.modbus`: a Modbus TCP server (pymodbus) with a holding-register block per camera
  (``masf-edge gateway modbus``).
* :mod:`edge.gateways.common`: what both share (value codes, the bridge from :class:`edge.feed.LineFeed`
  to the asyncio loop, start-up and shutdown).

Both subscribe to the daemon's publish socket through :class:`edge.feed.LineFeed`; they never touch the
inspection itself, so a gateway that crashes or is stopped changes nothing for the daemon, and a daemon
that stops or restarts only makes the gateways report ``Healthy`` false meanwhile. The PLC side is
documented in ``docs/plc.md``. asyncua and pymodbus (extra ``plc``) are imported only when a gateway runs.
"""
