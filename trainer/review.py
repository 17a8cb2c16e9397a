"""Dropping good threshold images that a review found not to be good parts, without a new fit.

With 99 threshold images the 1 % threshold is the highest of their scores, so one defective part filed
among the good images lifts the threshold to its own score and lets defects of its kind through. A fit
lists the highest-scoring threshold images (``run.json`` ``calibration_review``). When the operator finds
one that is not a good part, :func:`drop_threshold_images` sets the thresholds again from the others:
the model, its cue statistics and its selections stay as they are (other images, the fit images, set
them), so this takes seconds instead of a new fit. What was dropped is recorded in the run
(``calibration_dropped``), and :func:`trainer.train.recalibrate` leaves those images out as well.

The guarantee then holds for the remaining images, so drop only images that are not good parts:
dropping good images because they score high trims the threshold set from the top, and the threshold
falls below what the rule promises (more good parts are rejected than the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from trainer.calibrate import MIN_THRESHOLD_IMAGES
from trainer.data import read_image
from trainer.errors import RunError
from trainer.escapes import at_threshold
from trainer.models.masf import MASF
from trainer.runs import RunInfo
from trainer.train import review_entries, set_thresholds


def find_calibration_images(names: Sequence[str], calib: Sequence[str]) -> list[int]:
    """Each of ``names`` as an index into the run's calibration images ``calib`` (paths relative to the
    data root): an exact relative path, or a file name that exactly one calibration image has. Raises
    :class:`RunError` (one line, what to do) for a name that matches none or several."""
    by_path = {p: i for i, p in enumerate(calib)}
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(calib):
        by_name.setdefault(Path(p).name, []).append(i)
    out = []
    for name in names:
        key = Path(name).as_posix()
        if key in by_path:
            out.append(by_path[key])
            continue
        hits = by_name.get(Path(name).name, []) if Path(name).name == key else []
        if len(hits) != 1:
            what = "several" if hits else "none"
            raise RunError(
                f"{name!r} matches {what} of this run's calibration images: give the path as run.json "
                "lists it (calibration_review, data.split.calib), e.g. "
                f"{calib[hits[0] if hits else 0]!r}"
            )
        out.append(hits[0])
    return out


@torch.no_grad()
def drop_threshold_images(model: MASF, info: RunInfo, data_root: str | Path, names: Sequence[str]) -> RunInfo:
    """The run with ``names`` (threshold images, :func:`find_calibration_images`) left out of its
    threshold set and every inference path's threshold set again from the other threshold images under
    ``data_root``; the model, the fit images' roles and the selections are unchanged. Returns the new
    :class:`RunInfo` (save it with :func:`trainer.runs.save_run`); its ``calibration_dropped`` lists each
    dropped image with the deployed threshold before and after."""
    meta = info.meta
    calib = meta["data"]["split"]["calib"]
    roles = meta.get("calibration_roles")
    if not roles:
        raise RunError("this run has no calibration roles (it predates them): fit it again")
    drop = find_calibration_images(names, calib)
    fit_idx, thr_idx = list(roles["fit"]), list(roles["threshold"])
    for i in drop:
        if i in fit_idx:
            raise RunError(
                f"{calib[i]} fitted this run's cue statistics and selections, it does not set the threshold: "
                "remove it from the data set's train/good and fit again"
            )
        if i not in thr_idx:
            raise RunError(f"{calib[i]} was already dropped from this run's threshold images")
    keep = [i for i in thr_idx if i not in set(drop)]
    if len(keep) < MIN_THRESHOLD_IMAGES:
        raise RunError(
            f"dropping {len(set(drop))} of {len(thr_idx)} threshold images leaves {len(keep)}: at least "
            f"{MIN_THRESHOLD_IMAGES} must remain; add good images to the data set and fit again"
        )
    root = Path(data_root)
    images = [read_image(root / calib[i]) for i in keep]
    device = next(model.parameters()).device
    by_path, review = set_thresholds(model, info.config, images, keep, len(fit_idx), info.preprocess, device)
    deployed = by_path["tta" if info.config.tta.enabled else "plain"]
    before = info.calibration.threshold
    dropped = [*(meta.get("calibration_dropped") or [])]
    dropped += [
        {"index": i, "image": calib[i], "threshold_before": before, "threshold_after": deployed.threshold}
        for i in sorted(set(drop))
    ]
    new_meta = {
        **meta,
        "calibration_by_path": {k: v.to_dict() for k, v in by_path.items()},
        "calibration_roles": {"fit": fit_idx, "threshold": keep},
        "calibration_review": review_entries(review, list(calib)),
        "calibration_dropped": dropped,
        "synthetic_escapes": at_threshold(meta.get("synthetic_escapes"), deployed.threshold),
    }
    return RunInfo(info.config, info.preprocess, deployed, new_meta)
