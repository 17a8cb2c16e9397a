"""``masf-engine`` command line (same as ``python -m engines``).

    masf-engine export --run RUN_DIR --out BUNDLE [--spectral-mode gemm|dft|plugin] [--tta] [--part NAME]
                       [--verify-data DIR] [--metrics EVAL.json] [--opset 18] [--overwrite] [--threads N]
    masf-engine build --bundle BUNDLE [--precision fp16|fp32] [--max-batch N] [--opt-batch N] [--sm SM86]
                      [--timing-cache PATH] [--workspace-mb MB] [--weak-typing] [--hardware-compat]
                      [--version-compat] [--tensorrt auto|tensorrt|tensorrt_rtx]
    masf-engine verify --bundle BUNDLE [--trusted-key PUB.pem ...]
    masf-engine info --bundle BUNDLE [--json]
    masf-engine keygen --out DIR --name NAME
    masf-engine sign --bundle BUNDLE --key KEY.pem

``export`` needs the trainer (torch); ``build`` needs TensorRT (``tensorrt`` on the GPU machine, or
``tensorrt-rtx``, which also builds on a machine without a GPU); ``verify``, ``info``, ``keygen`` and
``sign`` import neither (signatures: ``cryptography``). ``export`` is the trainer's, found through the
``masf_edge.exporters`` entry point, so this module never imports the torch side.
User errors (bad run, bundle, data folder, option, missing TensorRT) print one line ``error: ...`` and
exit with status 2; a failed parity check exits with status 3 and writes no bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engines.errors import EngineError, ParityError
from engines.preprocess import PreprocessSpec

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_PARITY_FAILED = 3
EXIT_INTERRUPTED = 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masf-engine", description="Export and inspect MASF model bundles.")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="run directory -> bundle (ONNX + manifest), with a parity check")
    ex.add_argument("--run", required=True, help="run directory from 'masf-train fit'")
    ex.add_argument("--out", required=True, help="bundle directory to create")
    ex.add_argument(
        "--spectral-mode",
        choices=("gemm", "dft", "plugin"),
        default="gemm",
        help="gemm: DFTs as MatMuls, parses on every TensorRT 10 (default); dft: native ONNX DFT nodes; "
        "plugin: cuFFT TensorRT plugin nodes (TensorRT >= 10.6 with tensorrt.plugin; not ONNX Runtime)",
    )
    ex.add_argument("--tta", action="store_true", help="export the TTSA path (views as a batch in the graph)")
    ex.add_argument("--part", help="part name in the manifest (default: the run's data folder name)")
    ex.add_argument(
        "--verify-data",
        help="parity on DIR/test images (MVTec layout; default: the run's calibration images)",
    )
    ex.add_argument("--metrics", help="validation metrics JSON to record (e.g. from masf-train evaluate)")
    ex.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    ex.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the parity run")
    ex.add_argument("--sign-key", default=None, help="ed25519 private key (PEM) to sign the bundle with")

    bld = sub.add_parser("build", help="bundle ONNX -> TensorRT engine + build record, added to the bundle")
    bld.add_argument("--bundle", required=True, help="bundle directory (from masf-engine export)")
    bld.add_argument(
        "--precision", choices=("fp16", "fp32"), default="fp16", help="fp16 keeps an FP32 island"
    )
    bld.add_argument("--max-batch", type=int, default=8, help="largest batch of the profile (default 8)")
    bld.add_argument("--opt-batch", type=int, default=None, help="batch to tune for (default: max batch)")
    bld.add_argument("--sm", default=None, help="TensorRT-RTX target compute capability, e.g. SM86")
    bld.add_argument("--timing-cache", default=None, help="timing cache file to reuse and update")
    bld.add_argument("--workspace-mb", type=int, default=1024, help="workspace limit in MB (default 1024)")
    bld.add_argument(
        "--weak-typing",
        action="store_true",
        help="TensorRT 10: FP16 flag + FP32 layer constraints on the FP32 graph (default: strongly typed)",
    )
    bld.add_argument("--hardware-compat", action="store_true", help="TensorRT: engine for any Ampere+ GPU")
    bld.add_argument("--version-compat", action="store_true", help="TensorRT: version-compatible engine")
    bld.add_argument(
        "--tensorrt",
        choices=("auto", "tensorrt", "tensorrt_rtx"),
        default="auto",
        help="TensorRT package (auto: tensorrt if installed, else tensorrt_rtx)",
    )

    ver = sub.add_parser("verify", help="check a bundle's schema, seal and every file's checksum")
    ver.add_argument("--bundle", required=True, help="bundle directory")
    ver.add_argument(
        "--trusted-key",
        action="append",
        default=None,
        help="ed25519 public key (PEM); the bundle must be signed by one of them (repeatable)",
    )

    kg = sub.add_parser("keygen", help="make an ed25519 key pair for signing bundles")
    kg.add_argument("--out", required=True, help="folder for NAME.key.pem (private) and NAME.pub.pem")
    kg.add_argument("--name", required=True, help="key name")

    sg = sub.add_parser("sign", help="sign a bundle (writes manifest.sig)")
    sg.add_argument("--bundle", required=True, help="bundle directory")
    sg.add_argument("--key", required=True, help="ed25519 private key (PEM, from masf-engine keygen)")

    info = sub.add_parser("info", help="print what a bundle contains (manifest only; checksums: verify)")
    info.add_argument("--bundle", required=True, help="bundle directory")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    return parser


def _read_metrics(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EngineError(
            f"--metrics {path}: cannot read JSON ({type(err).__name__}): pass the file written by "
            "masf-train evaluate --json"
        ) from None
    if not isinstance(doc, dict):
        raise EngineError(f"--metrics {path}: expected a JSON object")
    return {"source": str(path), **doc}


def _summary(manifest: dict[str, Any]) -> str:
    spec, calib, export = manifest["preprocess"], manifest["calibration"], manifest["export"]
    threshold = calib["by_path"][calib["path"]]["threshold"]
    tiles = spec.get("tiles")
    frame = f"{spec['height']}x{spec['width']}"
    if tiles:
        count = PreprocessSpec.from_dict(spec).grid.count
        frame = f"{tiles['frame_height']}x{tiles['frame_width']} frame in {count} tiles of {frame}"
    return (
        f"masf part {manifest['model']['part']!r}, {frame} {spec['color']} "
        f"{spec['resize']}, {export['spectral_mode']} graph (opset {export['opset']}), "
        f"{calib['path']} path, threshold {threshold:.6g}, id {manifest['integrity']['digest'][:12]}"
    )


def _exporter() -> Any:
    """``export_run`` of the trainer, found through the ``masf_edge.exporters`` entry point (torch side)."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="masf_edge.exporters", name="masf"))
    if not found:
        raise EngineError(
            "export needs the trainer (torch): pip install 'masf-edge[trainer]' on this machine"
        )
    return found[0].load()


def _export(args: argparse.Namespace) -> int:
    export_run = _exporter()

    bundle = export_run(
        args.run,
        args.out,
        spectral_mode=args.spectral_mode,
        tta=args.tta,
        part=args.part,
        verify_data=args.verify_data,
        validation=_read_metrics(args.metrics),
        opset=args.opset,
        overwrite=args.overwrite,
        threads=args.threads,
    )
    if args.sign_key:
        from engines.signing import sign_bundle

        sign_bundle(bundle.path, args.sign_key)
    m = bundle.manifest
    parity = m["export"]["parity"]
    size_mb = m["files"][m["export"]["file"]]["size"] / 1e6
    print(
        f"bundle written to {bundle.path}: {_summary(m)}, model.onnx {size_mb:.1f} MB; parity on "
        f"{parity['images']}: map {parity['map_max_rel_err']:.1e}, score {parity['score_max_rel_err']:.1e} "
        f"(relative), {parity['verdict_mismatches']} verdict mismatches"
        + (
            f" ({parity['verdicts_at_threshold']} image(s) within the score tolerance of the threshold)"
            if parity.get("verdicts_at_threshold")
            else ""
        )
    )
    return 0


def _build(args: argparse.Namespace) -> int:
    from engines.tensorrt.bundle_engines import build_bundle_engine

    bundle, record = build_bundle_engine(
        args.bundle,
        args.precision,
        args.max_batch,
        opt_batch=args.opt_batch,
        workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache,
        compute_capability=args.sm,
        strongly_typed=not args.weak_typing,
        hardware_compat=args.hardware_compat,
        version_compat=args.version_compat,
        flavour=None if args.tensorrt == "auto" else args.tensorrt,
    )
    target = ", ".join(record.target_sms) or (
        "portable (TensorRT-RTX default)"
        if record.tensorrt_flavour == "tensorrt_rtx"
        else record.hardware_compatibility
    )
    gpu = f"on {record.gpu['name']}" if record.gpu else "without a GPU"
    print(
        f"engine {record.engine_file} added to {bundle.path}: {record.precision} ({record.strategy}), batch "
        f"1..{record.max_batch}, {record.tensorrt_flavour} {record.tensorrt_version}, target {target}, built "
        f"{gpu} in {record.build_seconds:.1f} s, {record.engine_size / 1e6:.1f} MB"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "export":
        return _export(args)
    if args.command == "build":
        return _build(args)
    from engines.bundle import Bundle

    if args.command == "verify":
        bundle = Bundle.open(args.bundle, trusted_keys=args.trusted_key)
        n = len(bundle.manifest["files"])
        signed = ", signature OK" if args.trusted_key else ""
        print(
            f"bundle {bundle.path}: OK (schema {bundle.manifest['schema_version']}, {n} file(s) verified"
            f"{signed}, {_summary(bundle.manifest)})"
        )
        return 0
    if args.command == "keygen":
        from engines.signing import make_signing_key

        priv, pub = make_signing_key(args.out, args.name)
        print(f"private key {priv} (keep it secret), public key {pub} (copy it to the edge boxes)")
        return 0
    if args.command == "sign":
        from engines.signing import sign_bundle

        record = sign_bundle(args.bundle, args.key)
        print(f"bundle {args.bundle}: signed by key {record['key_id']} (id {record['bundle_id'][:12]})")
        return 0
    if args.command == "info":
        bundle = Bundle.open(args.bundle, verify=False)
        m = bundle.manifest
        if args.json:
            print(json.dumps(m, indent=2))
            return 0
        calib, export = bundle.calibration, m["export"]
        parity = export.get("parity") or {}
        lines = [
            f"bundle      {bundle.path} (schema {m['schema_version']}, {m['producer']['name']} "
            f"{m['producer']['version']}, {m['created']})",
            f"model       {m['model']['family']}, part {m['model']['part']!r}, "
            f"backbone {m['backbone']['name']}",
            f"input       uint8 {m['input']['layout']} {m['input']['channel_order']} "
            f"{m['input']['height']}x{m['input']['width']}; preprocess {m['preprocess']}",
            f"calibration {m['calibration']['path']} path: threshold {calib['threshold']:.6g} "
            f"({calib.get('rule')}, target FRR {calib.get('target_frr')}, {calib.get('n_images')} images); "
            f"paths {sorted(m['calibration']['by_path'])}",
            f"id          {bundle.bundle_id} (model version {bundle.model_version})",
            f"graph       {export['file']}: {export['format']} opset {export['opset']}, spectral "
            f"{export['spectral_mode']}, tta {export['tta']}, {sum(export.get('ops', {}).values())} nodes",
            f"parity      map {parity.get('map_max_rel_err', float('nan')):.1e}, score "
            f"{parity.get('score_max_rel_err', float('nan')):.1e} on {parity.get('images', '?')}",
            "engines     "
            + (
                ", ".join(
                    f"{e['file']} ({e['precision']}, {e.get('tensorrt')}, batch <= {e.get('max_batch')})"
                    for e in bundle.engines
                )
                or "none (masf-engine build --bundle B)"
            ),
            "files       " + ", ".join(f"{k} ({v['size']} B)" for k, v in m["files"].items()),
        ]
        print("\n".join(lines))
        return 0
    raise AssertionError(args.command)


def _is_user_error(err: BaseException) -> bool:
    """An EngineError, or a trainer UserError (only if the trainer was imported: no torch for this check)."""
    if isinstance(err, EngineError):
        return True
    trainer_errors = sys.modules.get("trainer.errors")
    return trainer_errors is not None and isinstance(err, trainer_errors.UserError)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PARITY_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
