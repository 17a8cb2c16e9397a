"""benchmarks/bank_latency.py: the paired ratio, and ``--runs`` timing a fitted run's bundle graph beside
the reference graph (a real export and ONNX Runtime, a few calls)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
bank_latency = load_benchmark("bank_latency.py", "bench_bank_latency")


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    base = np.array([10.0, 20.0, 10.0, 40.0, 10.0])
    times = np.array([15.0, 30.0, 15.0, 60.0, 15.0])  # every round 1.5x, whatever the round's load
    ratio, low, high = bank_latency.paired_ratio(times, base, np.random.default_rng(0))
    assert (ratio, low, high) == (1.5, 1.5, 1.5)
    times = np.array([10.0, 40.0, 20.0, 40.0, 20.0])  # ratios 1, 2, 2, 1, 2
    ratio, low, high = bank_latency.paired_ratio(times, base, np.random.default_rng(0))
    assert ratio == 2.0 and 1.0 <= low <= ratio <= high <= 2.0


@pytest.mark.slow
def test_runs_are_timed_beside_the_reference_graph(trained_run: Path, tmp_path: Path) -> None:
    # the run twice as a (base, candidate) pair: two sessions of one graph, timed side by side
    out = subprocess.run(
        [sys.executable, "benchmarks/bank_latency.py", "--repeats", "3", "--threads", "1", "--reference-only",
         "--runs", str(trained_run), str(trained_run), "--pairs"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert not list(tmp_path.glob("bank_latency_*"))  # the exported graphs are removed at the end
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 6, rows  # header, the reference, the two sessions; the pairs' header and row
    assert rows[1].startswith("| today: full MASF") and rows[1].endswith("| 1.000 (1.000-1.000) |")
    name = re.escape(trained_run.name)
    for row, tag in ((rows[2], ""), (rows[3], " #2")):
        m = re.fullmatch(
            rf"\| run {name} \((\d+)x(\d+)\){tag} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| ([\d.]+) "
            r"\(([\d.]+)-([\d.]+)\) \|",
            row,
        )
        assert m is not None, row
        median, p90 = float(m.group(3)), float(m.group(4))
        ratio, low, high = (float(m.group(i)) for i in (6, 7, 8))
        assert 0 < median <= p90 and 0 < low <= ratio <= high
    pair = re.fullmatch(
        rf"\| run {name} \(\d+x\d+\) #2 \| run {name} \(\d+x\d+\) \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \|",
        rows[5],
    )
    assert pair is not None, rows[5]
    assert 0 < float(pair.group(2)) <= float(pair.group(1)) <= float(pair.group(3))


def test_pairs_need_an_even_number_of_runs(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bank_latency.main(["--runs", str(trained_run), "--pairs"])
    assert exit_.value.code == 2
    assert "--pairs needs (base, candidate) pairs of runs, got 1 runs" in capsys.readouterr().err


def test_the_reference_graph_keeps_the_selection_the_issue_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reference design ("today: full MASF") is built with the kNN selection of the code the issue
    measured (two passes, one TopK over each bank); every other graph with the product's."""
    import trainer.export.onnx

    scorers = []

    def capture(model: object, info: object, path: Path) -> dict[str, object]:
        scorers.append(model.scorer)  # type: ignore[attr-defined]
        return {}

    monkeypatch.setattr(trainer.export.onnx, "export_onnx", capture)
    (name, (config, overrides, sizes, a)), *_ = bank_latency.DESIGNS.items()
    assert name.startswith("today: full MASF")
    for reference in (True, False):
        bank_latency.build(config, overrides, sizes, a, tmp_path, two_pass_selection=reference)
    reference_scorer, product_scorer = scorers
    assert (reference_scorer.fused, reference_scorer.grouped) == (False, False)
    assert (product_scorer.fused, product_scorer.grouped) == (True, None)  # grouped in exported graphs
