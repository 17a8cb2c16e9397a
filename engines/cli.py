"""``masf-engine`` command line (same as ``python -m engines``).

    masf-engine export --run RUN_DIR --out BUNDLE [--spectral-mode gemm|dft] [--tta] [--part NAME]
                       [--verify-data DIR] [--metrics EVAL.json] [--opset 18] [--overwrite] [--threads N]
    masf-engine verify --bundle BUNDLE
    masf-engine info --bundle BUNDLE [--json]

``export`` needs the trainer (torch); ``verify`` and ``info`` do not import torch. User errors (bad run,
bundle, data folder or option) print one line ``error: ...`` and exit with status 2; a failed parity
check exits with status 3 and writes no bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engines.errors import EngineError, ParityError

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
        choices=("gemm", "dft"),
        default="gemm",
        help="gemm: DFTs as MatMuls, parses on every TensorRT 10 (default); dft: native ONNX DFT nodes",
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

    ver = sub.add_parser("verify", help="check a bundle's schema and every file's checksum")
    ver.add_argument("--bundle", required=True, help="bundle directory")

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
    return (
        f"masf part {manifest['model']['part']!r}, {spec['height']}x{spec['width']} {spec['color']} "
        f"{spec['resize']}, {export['spectral_mode']} graph (opset {export['opset']}), "
        f"{calib['path']} path, threshold {calib['threshold']:.6g}"
    )


def _export(args: argparse.Namespace) -> int:
    from engines.export.from_run import export_run

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
    m = bundle.manifest
    parity = m["export"]["parity"]
    size_mb = m["files"][m["export"]["file"]]["size"] / 1e6
    print(
        f"bundle written to {bundle.path}: {_summary(m)}, model.onnx {size_mb:.1f} MB; parity on "
        f"{parity['images']}: map {parity['map_max_rel_err']:.1e}, score {parity['score_max_rel_err']:.1e} "
        f"(relative), {parity['verdict_mismatches']} verdict mismatches"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "export":
        return _export(args)
    from engines.bundle import Bundle

    if args.command == "verify":
        bundle = Bundle.open(args.bundle)
        n = len(bundle.manifest["files"])
        print(
            f"bundle {bundle.path}: OK (schema {bundle.manifest['schema_version']}, {n} file(s) verified, "
            f"{_summary(bundle.manifest)})"
        )
        return 0
    if args.command == "info":
        bundle = Bundle.open(args.bundle, verify=False)
        m = bundle.manifest
        if args.json:
            print(json.dumps(m, indent=2))
            return 0
        calib, export = m["calibration"], m["export"]
        parity = export.get("parity") or {}
        lines = [
            f"bundle      {bundle.path} (schema {m['schema_version']}, {m['producer']['name']} "
            f"{m['producer']['version']}, {m['created']})",
            f"model       {m['model']['family']}, part {m['model']['part']!r}, "
            f"backbone {m['backbone']['name']}",
            f"input       uint8 {m['input']['layout']} {m['input']['channel_order']} "
            f"{m['input']['height']}x{m['input']['width']}; preprocess {m['preprocess']}",
            f"calibration {calib['path']} path: threshold {calib['threshold']:.6g} ({calib['rule']}, "
            f"target FRR {calib.get('target_frr')}, {calib.get('n_images')} images); "
            f"paths {sorted(calib['by_path'])}",
            f"graph       {export['file']}: {export['format']} opset {export['opset']}, spectral "
            f"{export['spectral_mode']}, tta {export['tta']}, {sum(export.get('ops', {}).values())} nodes",
            f"parity      map {parity.get('map_max_rel_err', float('nan')):.1e}, score "
            f"{parity.get('score_max_rel_err', float('nan')):.1e} on {parity.get('images', '?')}",
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
