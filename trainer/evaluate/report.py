"""Markdown evaluation report with ROC curve, score histogram and example heatmaps.

:func:`write_report` writes ``report.md``, ``roc.png``, ``histogram.png`` and ``examples.png`` into one
folder. Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global
backend change) and matplotlib is imported only when a report is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engines.verdict import verdict
from trainer.evaluate.metrics import GOOD_TYPE, _as_labels, _as_scores, rates_at_threshold, roc_auc, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ExampleLayout", "ReportExample", "example_layout", "write_report"]

REPORT_NAME = "report.md"
ROC_NAME = "roc.png"
HISTOGRAM_NAME = "histogram.png"
EXAMPLES_NAME = "examples.png"

_OVERLAY_ALPHA = 0.5

# Rows of the metrics table: (key in the metrics dict, label shown). Other scalar entries follow.
_METRIC_ROWS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "Image AUROC"),
    ("image_ap", "Image AP"),
    ("image_f1_max", "Image F1-max"),
    ("image_f1_max_threshold", "Threshold at image F1-max"),
    ("pixel_auroc", "Pixel AUROC"),
    ("pixel_ap", "Pixel AP"),
    ("aupro", "Pixel AUPRO (FPR <= 0.3)"),
    ("false_reject_rate", "False-reject rate at threshold"),
    ("escape_rate", "Escape rate at threshold"),
    ("synthetic_escape_estimate", "Escape estimate of the fit (its synthetic defects, same threshold)"),
    ("threshold", "Threshold"),
    ("n_test_images", "Test images"),
    ("n_good", "Good test images"),
    ("n_defective", "Defective test images"),
)


@dataclass
class ReportExample:
    """One test image shown in ``examples.png``.

    Attributes:
        name: Shown in the panel title (e.g. ``"broken_large/003.png"``).
        image: ``uint8`` RGB ``(H, W, 3)`` or gray ``(H, W)``.
        mask: Ground truth, bool ``(H, W)``, or ``None`` when there is none (good images).
        anomaly_map: float ``(H, W)``, same size as ``image``.
        score: Image score.
        label: 1 = defective, 0 = good.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None
    anomaly_map: np.ndarray
    score: float
    label: int


def _fmt(value: Any) -> str:
    """Formats a metric value for the Markdown tables: floats with 4 decimals, ``n/a`` for missing."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png")
    fig.clear()


def _plot_roc(path: Path, scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Writes the image-level ROC curve; returns the AUROC or ``None`` if a class is missing."""
    fig = _new_figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    auroc: float | None = None
    if labels.any() and not labels.all():
        curve = roc_curve(scores, labels)
        auroc = roc_auc(scores, labels)
        ax.plot(curve["fpr"], curve["tpr"], color="tab:blue", lw=2, label=f"ROC (AUROC = {auroc:.4f})")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class in the test set", ha="center", va="center")
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("False positive rate (good images rejected)")
    ax.set_ylabel("True positive rate (defective images caught)")
    ax.set_title("Image-level ROC")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return auroc


def _plot_histogram(path: Path, scores: np.ndarray, labels: np.ndarray, threshold: float) -> None:
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    finite_thr = math.isfinite(threshold)
    lo, hi = float(scores.min()), float(scores.max())
    if finite_thr:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41).tolist()
    good, bad = scores[~labels], scores[labels]
    if good.size:
        ax.hist(good, bins=bins, alpha=0.6, color="tab:green", label=f"good (n={good.size})")
    if bad.size:
        ax.hist(bad, bins=bins, alpha=0.6, color="tab:red", label=f"defective (n={bad.size})")
    if finite_thr:
        ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold = {threshold:.4g}")
    ax.set_xlabel("Image score (higher = more anomalous)")
    ax.set_ylabel("Images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Image score distribution")
    ax.legend(loc="best")
    fig.tight_layout()
    _save(fig, path)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"example image must be (H, W) or (H, W, 3), got shape {img.shape}")
    return img


_FIG_WIDTH = 9.0  # inches, at 100 dpi
_TITLE_IN = 0.3  # inches above each stacked panel for its title
_LONG_ASPECT = 2.5  # long side / short side above which example panels are stacked, not side by side


@dataclass(frozen=True)
class ExampleLayout:
    """How the example grid draws its images: ``stacked`` (input, truth and overlay one under the other,
    each the figure's full width, for long parts), ``rotate`` (tall parts turned 90 degrees first) and the
    stacked panels' height in inches."""

    stacked: bool
    rotate: bool
    panel_height: float


def example_layout(sizes: Sequence[tuple[int, int]]) -> ExampleLayout:
    """The grid layout for images of ``(h, w)`` sizes: side by side for roughly square parts; for long
    parts (median long/short side > 2.5, e.g. a 16:1 line-scan strip) stacked full-width panels, tall
    parts turned to lie down, so a thin part is drawn across the page instead of as a sliver."""
    if not sizes:
        return ExampleLayout(False, False, 0.0)
    aspects = [w / h for h, w in sizes]
    aspect = float(np.median(aspects))
    if 1.0 / _LONG_ASPECT <= aspect <= _LONG_ASPECT:
        return ExampleLayout(False, False, 0.0)
    rotate = aspect < 1.0
    wide = 1.0 / aspect if rotate else aspect
    return ExampleLayout(True, rotate, float(np.clip(_FIG_WIDTH / wide, 0.4, 3.0)))


def _plot_examples(path: Path, examples: Sequence[ReportExample]) -> tuple[float, float] | None:
    """Writes the example grid; returns the heatmap colour range used (shared by all rows)."""
    from matplotlib import colormaps

    if not examples:
        fig = _new_figure(6.0, 1.5)
        fig.text(0.5, 0.5, "no examples selected", ha="center", va="center")
        _save(fig, path)
        return None
    rgbs: list[np.ndarray] = []
    for ex in examples:
        rgb = _to_rgb(ex.image)
        amap = np.asarray(ex.anomaly_map, dtype=np.float64)
        if amap.shape != rgb.shape[:2]:
            raise ValueError(
                f"example {ex.name!r}: anomaly map shape {amap.shape} differs from image size {rgb.shape[:2]}"
            )
        if ex.mask is not None and np.asarray(ex.mask).shape != rgb.shape[:2]:
            raise ValueError(
                f"example {ex.name!r}: mask shape {np.asarray(ex.mask).shape} "
                f"differs from image size {rgb.shape[:2]}"
            )
        rgbs.append(rgb)
    # One colour scale for every heatmap so that rows are comparable.
    finite = [np.asarray(ex.anomaly_map, dtype=np.float64) for ex in examples]
    vmin = min(float(np.nanmin(a)) for a in finite)
    vmax = max(float(np.nanmax(a)) for a in finite)
    span = vmax - vmin if vmax > vmin else 1.0
    jet = colormaps["jet"]

    n = len(examples)
    layout = example_layout([rgb.shape[:2] for rgb in rgbs])
    if layout.rotate:  # tall parts are drawn lying down, so that the stacked panels stay wide
        rgbs = [np.rot90(rgb) for rgb in rgbs]
        finite = [np.rot90(a) for a in finite]
    if layout.stacked:
        fig = _new_figure(_FIG_WIDTH, 3 * n * (layout.panel_height + _TITLE_IN))
    else:
        fig = _new_figure(_FIG_WIDTH, 3.0 * n)
    turned = " (turned 90 deg)" if layout.rotate else ""
    for row, (ex, rgb, amap) in enumerate(zip(examples, rgbs, finite, strict=True)):
        kind = "defective" if ex.label else "good"
        if layout.stacked:  # long parts: input, truth and overlay one under the other, full width
            axes = [fig.add_subplot(3 * n, 1, 3 * row + k + 1) for k in range(3)]
        else:
            axes = [fig.add_subplot(n, 3, 3 * row + col + 1) for col in range(3)]
        mask = ex.mask if ex.mask is None or not layout.rotate else np.rot90(np.asarray(ex.mask))
        axes[0].imshow(rgb)
        sep = " - " if layout.stacked else "\n"
        axes[0].set_title(f"{ex.name}{sep}input ({kind}){turned}", fontsize=9)
        if mask is not None:
            axes[1].imshow(np.asarray(mask) != 0, cmap="gray", vmin=0, vmax=1)
            axes[1].set_title("ground truth", fontsize=9)
        else:
            axes[1].imshow(np.zeros(rgb.shape[:2]), cmap="gray", vmin=0, vmax=1)
            axes[1].set_title("ground truth (none)", fontsize=9)
        heat = jet(np.clip((np.nan_to_num(amap, nan=vmin) - vmin) / span, 0.0, 1.0))[..., :3]
        overlay = (1.0 - _OVERLAY_ALPHA) * (rgb / 255.0) + _OVERLAY_ALPHA * heat
        axes[2].imshow(np.clip(overlay, 0.0, 1.0))
        axes[2].set_title(f"score {ex.score:.4g}, label {ex.label} ({kind})", fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    return vmin, vmax


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    lines = ["| Metric | Value |", "|---|---|"]
    shown: set[str] = set()
    for key, label in _METRIC_ROWS:
        if key in metrics:
            value = metrics[key]
            # Thresholds live on the score scale (any magnitude): significant digits, not decimals.
            text = f"{float(value):.6g}" if "threshold" in key and value is not None else _fmt(value)
            lines.append(f"| {label} | {text} |")
            shown.add(key)
    for key in sorted(metrics):
        value = metrics[key]
        if key in shown or isinstance(value, Mapping | list | tuple | np.ndarray):
            continue
        lines.append(f"| {_md_escape(str(key))} | {_md_escape(_fmt(value))} |")
    return lines


def _per_defect_table(
    metrics: Mapping[str, Any], scores: np.ndarray, labels: np.ndarray, types: list[str], threshold: float
) -> list[str]:
    per_auroc = metrics.get("per_defect_image_auroc")
    per_auroc = per_auroc if isinstance(per_auroc, Mapping) else {}
    type_arr = np.array(types, dtype=object)
    lines = [
        "| Defect type | Images | Mean score | Flagged at threshold | AUROC vs good |",
        "|---|---|---|---|---|",
    ]
    names = sorted(set(types), key=lambda t: (t != GOOD_TYPE, t))
    for name in names:
        sel = scores[type_arr == name]
        flagged = int(np.count_nonzero(sel >= threshold))
        auroc = "—" if name == GOOD_TYPE else _fmt(per_auroc.get(name))
        lines.append(
            f"| {_md_escape(name)} | {sel.size} | {_fmt(float(sel.mean()))} | "
            f"{flagged}/{sel.size} ({flagged / sel.size:.1%}) | {auroc} |"
        )
    return lines


def write_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    defect_types: Sequence[str],
    threshold: float,
    examples: Sequence[ReportExample],
    title: str = "MASF evaluation",
) -> Path:
    """Writes ``report.md``, ``roc.png``, ``histogram.png`` and ``examples.png`` into ``out_dir``.

    Args:
        out_dir: Output folder, created if missing; existing report files are overwritten.
        metrics: Metrics to tabulate, e.g. :func:`~trainer.evaluate.metrics.image_metrics` merged with
            :func:`~trainer.evaluate.metrics.pixel_metrics`. Scalar entries go to the metrics table
            (known keys first, with readable names); ``per_defect_image_auroc`` feeds the per-defect
            table; other nested entries are ignored.
        scores: Shape ``(N,)`` image scores of the test set (higher = more anomalous).
        labels: Shape ``(N,)``, 1 = defective, 0 = good.
        defect_types: ``N`` defect type names parallel to ``scores`` (``"good"`` for good images).
        threshold: Operating threshold (``score >= threshold`` = FAIL); the rates are recomputed at it.
        examples: Rows of ``examples.png``, in the given order (may be empty).
        title: Report heading.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: Inconsistent lengths, non-finite scores, or an example whose arrays do not match.
    """
    s = _as_scores(scores)
    if s.size == 0:
        raise ValueError("cannot write a report without test scores")
    y = _as_labels(labels, s.size)
    types = [str(t) for t in defect_types]
    if len(types) != s.size:
        raise ValueError(
            f"scores and defect_types differ in length: {s.size} scores, {len(types)} defect types"
        )
    s64 = s.astype(np.float64)
    thr = float(threshold)
    rates = rates_at_threshold(s64, y, thr)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    auroc = _plot_roc(out / ROC_NAME, s64, y)
    _plot_histogram(out / HISTOGRAM_NAME, s64, y, thr)
    heat_range = _plot_examples(out / EXAMPLES_NAME, examples)

    lines = [f"# {title}", ""]
    auroc_text = (
        f"image AUROC **{auroc:.4f}**" if auroc is not None else "image AUROC undefined (one class only)"
    )
    lines += [
        f"{s.size} test images ({rates['n_good']} good, {rates['n_defective']} defective); {auroc_text}.",
        "",
        "## Metrics",
        "",
        *_metrics_table(metrics),
        "",
        "## Operating threshold",
        "",
        f"An image FAILs when its score is >= **{thr:.6g}**.",
        "",
        "| Rate | Value | Count |",
        "|---|---|---|",
        f"| False-reject rate (good images that FAIL) | {rates['false_reject_rate']:.2%} | "
        f"{rates['n_false_reject']}/{rates['n_good']} |",
        f"| Escape rate (defective images that PASS) | {rates['escape_rate']:.2%} | "
        f"{rates['n_escape']}/{rates['n_defective']} |",
        "",
        "## Per defect type",
        "",
        *_per_defect_table(metrics, s64, y, types, thr),
        "",
        "## Figures",
        "",
        f"![Image-level ROC curve]({ROC_NAME})",
        "",
        f"![Score histogram of good and defective images with the threshold]({HISTOGRAM_NAME})",
        "",
        f"![Examples: input, ground truth, heatmap overlay]({EXAMPLES_NAME})",
        "",
    ]
    if examples:
        assert heat_range is not None
        lines += [
            f"Examples (rows of [{EXAMPLES_NAME}]({EXAMPLES_NAME})): input, ground truth, anomaly map "
            f"overlaid in the jet colormap on a common scale from {heat_range[0]:.4g} (blue) to "
            f"{heat_range[1]:.4g} (red).",
            "",
            "| Example | Label | Score | Verdict |",
            "|---|---|---|---|",
        ]
        for ex in examples:
            decision = verdict(float(ex.score), thr)
            kind = "defective" if ex.label else "good"
            lines.append(f"| {_md_escape(ex.name)} | {kind} | {float(ex.score):.4g} | {decision} |")
        lines.append("")
    report = out / REPORT_NAME
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
