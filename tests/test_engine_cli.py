"""Tests for engines.cli (``masf-engine``): export summary, verify, info, one-line errors and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from engine_support import ExportedBundle, run_python

from engines.bundle import Bundle
from engines.cli import EXIT_PARITY_FAILED, EXIT_USER_ERROR, _build_parser, main
from engines.errors import ParityError

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_export_prints_a_one_line_summary(exported: ExportedBundle) -> None:
    assert exported.exit_code == 0
    lines = exported.stdout.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"bundle written to {exported.path}: masf part 'widget', 64x64 rgb letterbox")
    assert "gemm graph (opset 18), plain path, threshold" in line
    assert "parity on 5 calibration images" in line and "0 verdict mismatches" in line
    manifest = json.loads((exported.path / "manifest.json").read_text())
    assert manifest["model"]["part"] == "widget"
    assert manifest["validation"]["image_auroc"] == 0.9
    assert manifest["validation"]["source"].endswith("eval.json")
    run = json.loads((exported.run / "run.json").read_text())
    assert manifest["calibration"]["by_path"] == run["calibration_by_path"]
    assert "threshold" not in manifest["calibration"]  # stored once, in by_path (schema 2)
    assert Bundle.open(exported.path).threshold == run["calibration_by_path"]["plain"]["threshold"]
    assert manifest["data"]["train_fingerprint"] == run["data"]["train_fingerprint"]
    assert manifest["backbone"]["name"] == "tf_efficientnet_lite0"
    assert manifest["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert manifest["input"]["channel_order"] == "RGB"
    assert manifest["source"]["run_dir"] == str(exported.run.resolve())


def test_verify_and_info(exported: ExportedBundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--bundle", str(exported.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bundle {exported.path}: OK (schema 2, 1 file(s) verified")
    assert main(["info", "--bundle", str(exported.path)]) == 0
    out = capsys.readouterr().out
    assert "part 'widget'" in out and "spectral gemm" in out and "plain path: threshold" in out
    assert main(["info", "--bundle", str(exported.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["export"]["spectral_mode"] == "gemm"


def test_verify_corrupt_bundle_exits_2(
    exported: ExportedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported.path, copy)
    with open(copy / "model.onnx", "r+b") as fh:
        fh.truncate(1000)
    assert main(["verify", "--bundle", str(copy)]) == EXIT_USER_ERROR
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        f"error: bundle {copy}: model.onnx checksum mismatch (file changed or truncated): "
        "re-export with masf-engine export"
    )
    (copy / "manifest.json").write_text('{"schema_version": 1, "producer"')
    assert main(["info", "--bundle", str(copy)]) == EXIT_USER_ERROR
    assert "manifest.json is corrupt or truncated" in _one_error_line(capsys.readouterr().err)


def test_export_user_errors_exit_2_before_exporting(
    exported: ExportedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "b")], "run directory not found"),
        (["--run", str(exported.run), "--out", str(exported.path)], "already exists"),
        (
            [
                "--run",
                str(exported.run),
                "--out",
                str(tmp_path / "b"),
                "--verify-data",
                str(tmp_path / "none"),
            ],
            "test not found: expected DIR/test/good",
        ),
        (
            ["--run", str(exported.run), "--out", str(tmp_path / "b"), "--metrics", str(tmp_path / "x.json")],
            "--metrics",
        ),
    ]
    for args, message in cases:
        assert main(["export", *args]) == EXIT_USER_ERROR, args
        assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "b").exists()


def test_bad_option_is_rejected_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--run", "r", "--out", "o", "--spectral-mode", "fftw"])
    assert info.value.code == 2
    assert "invalid choice: 'fftw'" in capsys.readouterr().err
    for mode in ("gemm", "dft", "plugin"):
        args = _build_parser().parse_args(["export", "--run", "r", "--out", "o", "--spectral-mode", mode])
        assert args.spectral_mode == mode


def test_parity_failure_exits_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import trainer.export.from_run as from_run

    def failing(*args: object, **kwargs: object) -> None:
        raise ParityError("ONNX Runtime does not match PyTorch on 5 images: do not deploy this graph")

    monkeypatch.setattr(from_run, "export_run", failing)
    assert main(["export", "--run", "r", "--out", "o"]) == EXIT_PARITY_FAILED
    assert "does not match PyTorch" in _one_error_line(capsys.readouterr().err)


def test_python_dash_m_engines_verify_without_torch(exported: ExportedBundle) -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['masf-engine', 'verify', '--bundle', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('engines', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    res = run_python(code, str(exported.path))
    assert res.returncode == 0, res.stderr
    assert "OK (schema 2" in res.stdout and "TORCH False" in res.stdout


def test_build_adds_an_engine_and_user_errors_exit_2(
    exported: ExportedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trt_rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (.[tensorrt-build])")
    copy = tmp_path / "b"
    shutil.copytree(exported.path, copy)
    argv = ["build", "--bundle", str(copy), "--precision", "fp32", "--max-batch", "2", "--sm", "SM86"]
    assert main([*argv, "--tensorrt", "tensorrt_rtx", "--timing-cache", str(tmp_path / "tc")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"engine model.fp32.sm86.engine added to {copy}: fp32")
    assert f"batch 1..2, tensorrt_rtx {trt_rtx.__version__}, target SM86, built without a GPU" in out[0]
    assert main(["verify", "--bundle", str(copy)]) == 0
    assert "3 file(s) verified" in capsys.readouterr().out
    assert main(["info", "--bundle", str(copy)]) == 0
    assert "engines     model.fp32.sm86.engine (fp32, tensorrt_rtx" in capsys.readouterr().out
    cases = [
        (["--weak-typing"], "weak typing (layer precision constraints) needs NVIDIA TensorRT 10"),
        (["--sm", "SM90"], "cannot target SM90"),
        (["--hardware-compat"], "TensorRT-RTX has no hardware/version compatibility modes"),
        (["--max-batch", "0"], "need 1 <= opt batch"),
    ]
    for extra, message in cases:
        assert main(["build", "--bundle", str(copy), "--tensorrt", "tensorrt_rtx", *extra]) == EXIT_USER_ERROR
        assert message in _one_error_line(capsys.readouterr().err), extra
    assert main(["build", "--bundle", str(tmp_path / "none")]) == EXIT_USER_ERROR
    assert "not found (create one with: masf-engine export" in _one_error_line(capsys.readouterr().err)
    assert sorted(Bundle.open(copy).manifest["files"]) == [
        "model.fp32.sm86.build.json", "model.fp32.sm86.engine", "model.onnx",
    ]  # fmt: skip
