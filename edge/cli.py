"""``masf-edge`` command line (same as ``python -m edge``).

    masf-edge run --config configs/edge/LINE.yaml [--set KEY=VALUE ...] [--log-level info]
    masf-edge check --config configs/edge/LINE.yaml [--set KEY=VALUE ...] [--frame-timeout 10]
    masf-edge subscribe --connect tcp://127.0.0.1:5556 [--save-heatmaps DIR] [--count N]
    masf-edge keys --out DIR --name NAME
    masf-edge demo [--out runs/demo] [--data DIR]
    masf-edge part collect|import|review|train|cancel|promote|rollback|status ...
        --config configs/edge/LINE.yaml
    masf-edge gateway opcua|modbus --config configs/edge/LINE.yaml
    masf-edge page --config configs/edge/LINE.yaml

``run`` is the daemon (one per line; under systemd: ``systemd/masf-edge@.service``). ``check`` is for
installers: it validates the config, opens every bundle (checksums, seal, signature when required,
backend, one warm-up inference) and every camera (one frame), prints one line each and exits 0 when all
are fine, 2 otherwise. ``subscribe`` is the reference subscriber. ``keys`` makes a CURVE key pair.

User errors print one line ``error: ...`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from typing import Any

from edge.config import load_edge_config
from edge.errors import EdgeError, SourceError
from engines.errors import EngineError

__all__ = ["main"]

EXIT_USER_ERROR = 2


def _build_parser() -> argparse.ArgumentParser:
    from edge.demo import add_demo_arguments
    from edge.keys import add_keys_arguments
    from edge.subscriber import add_subscribe_arguments

    parser = argparse.ArgumentParser(prog="masf-edge", description="MASF Edge inspection daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the inspection daemon of one line"),
        ("check", "validate a line config: open every bundle and camera once, then exit"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="line config (YAML), e.g. configs/edge/demo.yaml")
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
        )
        p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        if name == "check":
            p.add_argument("--frame-timeout", type=float, default=10.0, help="seconds to wait for a frame")
    add_subscribe_arguments(sub.add_parser("subscribe", help="print results as they are published"))
    add_keys_arguments(sub.add_parser("keys", help="make a CURVE key pair (public .key + .key_secret)"))
    add_demo_arguments(sub.add_parser("demo", help="train a generated part, then inspect a replay of it"))
    _add_part_commands(sub.add_parser("part", help="teach the line a new part: collect, train, promote, ..."))
    gw = sub.add_parser("gateway", help="PLC gateways that mirror the daemon's results (separate processes)")
    gw_sub = gw.add_subparsers(dest="gateway", required=True)
    for name, module, help_text in _PLUGINS:
        if module.startswith("edge.gateways."):
            _add_plugin(gw_sub.add_parser(name, help=help_text), module)
    _add_plugin(
        sub.add_parser("page", help="the operator page: a local web server showing live results"), "edge.page"
    )
    return parser


# Separate processes beside the daemon; each module has add_arguments(parser) and run(args) -> int and is
# imported only when its command runs (asyncua, pymodbus: extra 'plc').
_PLUGINS = (
    ("opcua", "edge.gateways.opcua", "OPC UA server with the results of every camera"),
    ("modbus", "edge.gateways.modbus", "Modbus TCP server with a holding-register map per camera"),
)


def _add_plugin(parser: argparse.ArgumentParser, module: str) -> None:
    parser.set_defaults(plugin=module)
    parser.add_argument("--config", required=False, help="the line config (YAML) the daemon runs with")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return  # the run reports what to install
    mod.add_arguments(parser)


def _run_plugin(args: argparse.Namespace) -> int:
    try:
        mod = importlib.import_module(args.plugin)
    except ImportError as err:
        raise EdgeError(f"{args.plugin} cannot be imported ({err}): pip install 'masf-edge[plc]'") from None
    code: int = mod.run(args)
    return code


_PART_ACTIONS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "collect": ("save a camera's next frames as good training images", [
        ("--camera", {"required": True}), ("--part", {"required": True}),
        ("--count", {"type": int, "required": True}),
    ]),
    "import": ("import images (a folder: train/good or flat, defects/) or an evidence item", [
        ("--part", {"required": True}), ("--dir", {}), ("--evidence", {}),
        ("--kind", {"choices": ("good", "defect"), "default": "good"}),
    ]),
    "review": ("a verdict on a good image a job's validation lists (defect: moved to the defects)", [
        ("--part", {"required": True}), ("--image", {"required": True}),
        ("--verdict", {"choices": ("defect", "good"), "required": True}),
        ("--retrain", {"action": "store_true", "help": "then start a training job"}),
    ]),
    "train": ("train and validate a new version in a low-priority worker", [
        ("--part", {"required": True}), ("--train-config", {"dest": "train_config"}),
    ]),
    "cancel": ("cancel a training job", [("--job", {"required": True})]),
    "promote": ("make a version live (hot swap between two frames)", [
        ("--part", {"required": True}), ("--version", {"required": True}),
    ]),
    "rollback": ("go back to the version live before", [("--part", {"required": True})]),
    "status": ("the store, the versions, the history and the jobs", [("--part", {})]),
}  # fmt: skip


def _add_part_commands(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    for name, (help_text, options) in _PART_ACTIONS.items():
        p = actions.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="the line config (its control address)")
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
        )
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the daemon's reply")
        for flag, kw in options:
            p.add_argument(flag, **kw)


def _part(args: argparse.Namespace) -> int:
    import json

    from edge.feed import curve_client_for
    from edge.subscriber import ControlClient

    cfg = load_edge_config(args.config, args.set)
    request: dict[str, Any] = {"cmd": {"status": "parts"}.get(args.action, args.action)}
    for key in ("camera", "part", "count", "dir", "evidence", "kind", "job", "version", "image", "verdict"):
        value = getattr(args, key, None)
        if value is not None:
            request[key] = value
    if args.action == "train" and args.train_config:
        request["config"] = args.train_config
    if args.action == "review" and args.retrain:
        request["retrain"] = True
    if args.action == "import" and request.get("dir"):
        request.pop("kind", None)
    client = ControlClient(cfg.control.address, timeout_s=args.timeout, curve_client=curve_client_for(cfg))
    try:
        reply = client.request(**request)
    finally:
        client.close()
    if not reply.get("ok"):
        print(f"error: {reply.get('error')}", file=sys.stderr)
        return EXIT_USER_ERROR
    reply.pop("ok", None)
    print(json.dumps(reply, indent=2, default=str))
    return 0


def _check(args: argparse.Namespace) -> int:
    from edge.daemon import model_key
    from edge.model import load_model
    from edge.sources import open_source

    cfg = load_edge_config(args.config, args.set)
    print(f"config {args.config}: OK (line {cfg.line}, {len(cfg.cameras)} camera(s))")
    trusted = list(cfg.security.trusted_keys) if cfg.security.require_signed_bundles else None
    failed = 0
    loaded: dict[str, str] = {}
    for cam in cfg.cameras:
        key = model_key(cam)
        if key not in loaded:
            try:
                m = load_model(cam.bundle, cam.backend, cam.threads, trusted, warmup=True)
                loaded[key] = (
                    f"part {m.part!r}, model {m.model_version}, {m.backend_name}, threshold "
                    f"{m.threshold:.6g}, loaded and warmed up in {m.load_seconds:.2f} s"
                )
                m.close()
            except EngineError as err:
                loaded[key] = f"FAILED: {err}"
        ok = not loaded[key].startswith("FAILED")
        failed += not ok
        print(f"camera {cam.name}: bundle {cam.bundle}: {loaded[key]}")
        try:
            source = open_source(cam.name, cam.source, triggered=cam.mode == "triggered")
        except SourceError as err:
            print(f"camera {cam.name}: source FAILED: {err}")
            failed += 1
            continue
        try:
            if getattr(source, "supports_trigger", False) and cam.mode == "triggered":
                source.trigger()
            frame, deadline = None, time.monotonic() + args.frame_timeout
            while frame is None and time.monotonic() < deadline:
                frame = source.read(min(1.0, args.frame_timeout))
            if frame is None:
                print(f"camera {cam.name}: source FAILED: no frame within {args.frame_timeout:g} s")
                failed += 1
            elif frame.image is None:
                print(f"camera {cam.name}: source FAILED: unusable frame: {frame.error}")
                failed += 1
            else:
                h, w = frame.image.shape[:2]
                print(f"camera {cam.name}: source {cam.source.kind} OK, frame {w}x{h} ({frame.pixel_format})")
        except (SourceError, StopIteration, EngineError) as err:
            print(f"camera {cam.name}: source FAILED: {err}")
            failed += 1
        except Exception as err:  # EndOfStream and driver errors: reported, never a traceback
            print(f"camera {cam.name}: source FAILED: {type(err).__name__}: {err}")
            failed += 1
        finally:
            source.close()
    print(f"check: {'OK' if not failed else f'{failed} problem(s)'}")
    return 0 if not failed else EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "run":
            import faulthandler
            import signal

            from edge.service import EXIT_UNHEALTHY, run_service

            # every thread's stack in the journal when systemd's watchdog aborts a wedged daemon (SIGABRT),
            # and on demand with SIGUSR2 (kill -USR2 PID) for diagnosis
            faulthandler.enable()
            faulthandler.register(signal.SIGUSR2, all_threads=True)

            code = run_service(args.config, args.set, hard_stop=True)
            if code == EXIT_UNHEALTHY:
                # a thread is stuck in native code (a driver, an inference): it cannot be joined, and
                # interpreter finalisation could wait on it forever; systemd restarts the service
                logging.shutdown()
                os._exit(code)
            return code
        if args.command == "check":
            return _check(args)
        if args.command == "subscribe":
            from edge.subscriber import run_subscribe

            return run_subscribe(args)
        if args.command == "keys":
            from edge.keys import run_keys

            return run_keys(args)
        if args.command == "part":
            return _part(args)
        if args.command in ("gateway", "page"):
            return _run_plugin(args)
        if args.command == "demo":
            from edge.demo import run_demo

            return run_demo(args)
    except (EdgeError, EngineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)
