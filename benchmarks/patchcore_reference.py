"""Reference run of anomalib's own PatchCore on an MVTec-layout data set, with OUR lite0 teacher weights.

Diagnostic for issue 11 (benchmarks/RESULTS.md): why ``configs/train/patchcore_repro.yaml`` does not give
the numbers a peer measured with anomalib 2.7 PatchCore on magnetic tile. It runs anomalib's classes
(``anomalib.models.Patchcore`` with its ``PatchcoreModel``, ``TimmFeatureExtractor``, ``KCenterGreedy``,
``AnomalyMapGenerator`` and pre-processor; ``anomalib.data.Folder`` for the data split;
``anomalib.metrics`` for its metric values), not a re-implementation. Protocol switches:

* ``--train all|fit``: all of ``train/good`` (anomalib) or the trainer's fit split
  (``trainer.data.split_train_calib`` with ``--calib-fraction`` / ``--min-calib`` / ``--seed``, as
  ``masf-train fit`` does: the calibration images are not used);
* ``--center-crop N``: anomalib's optional center crop after the resize (off by default in 2.7);
* ``--norm imagenet|lite0``: anomalib's ImageNet mean/std (its default) or lite0's mean = std = 0.5;
* the test set is always scored in full; the metrics are reported on the whole test set and on the
  random halves that ``anomalib.data.Folder`` (default ``val_split_mode=from_test``, ratio 0.5) keeps
  as its test set, one per ``--half-seeds`` seed.

Diagnostics: ``--ours RUN`` scores a ``masf-train`` run (its own image scores and maps) through the same
split and metric code instead of fitting anomalib, for like-for-like rows; ``--ours RUN
--compare-embeddings N`` compares its patch embeddings with anomalib's on N test images;
``--pool-exclude-pad`` makes anomalib's 3x3 aggregation ignore the zero padding, as our ``JointEmbedder``.

Metrics: anomalib's ``AUROC`` (image, pixel) and ``AUPRO(fpr_limit=0.3)`` at the model resolution
(masks resized by the pre-processor) after its ``PostProcessor`` (min-max and thresholds from the
validation images: the test set itself for the whole test set, the other half for a half), as its
``Engine.test`` computes them, and OUR ``trainer.evaluate.metrics`` on the full-resolution
masks (maps resized with ``cv2.INTER_LINEAR`` to each image's original size, as the trainer's
evaluation does).

One change to anomalib, on by default (``--exact-coreset`` turns it off): ``KCenterGreedy``'s distance
update is computed as ``sqrt(|x|^2 - 2 x.c + |c|^2)`` (one matrix-vector product) instead of
``norm(x - c)`` (an ``N x D`` temporary per step); the same k-center greedy selection in exact
arithmetic, about 15x faster on a 2-core CPU (anomalib's form takes ~1.1 s per step on ~600k x 335
features, i.e. hours for a 1 % coreset).

Run with an environment that has anomalib 2.7 (kept apart from the project's venv), from the repo root:

    /work/avenv/bin/python benchmarks/patchcore_reference.py --out /work/repro_out/default

Not imported by the trainer, the engines or the edge daemon, nor by the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

try:
    import anomalib
    from anomalib.data import Folder
    from anomalib.metrics import AUPRO, AUROC
    from anomalib.models import Patchcore
    from anomalib.models.components.sampling import KCenterGreedy
    from anomalib.post_processing import PostProcessor
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize
except ImportError as _err:  # pragma: no cover - diagnostic script
    sys.exit(
        f"benchmarks/patchcore_reference.py needs anomalib 2.7 ({_err}); install it in a separate "
        "environment, not the project's venv, e.g.\n"
        "  cp -a .venv /work/avenv && /work/avenv/bin/python -m pip install anomalib==2.7.0\n"
        "and run this script with /work/avenv/bin/python"
    )

from trainer.data import read_image, read_mask, scan_test, scan_train, split_train_calib  # noqa: E402
from trainer.evaluate.metrics import pixel_metrics, roc_auc  # noqa: E402
from trainer.models.backbones import lite0_filter_fn, lite0_weights_path  # noqa: E402

log = logging.getLogger("patchcore_reference")

DATA = Path("/work/shared/data/magnetic_tile/magnetic_tile")
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
LITE0 = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def fast_update_distances(self: KCenterGreedy, cluster_center: int | torch.Tensor | None) -> None:
    """``KCenterGreedy.update_distances`` as ``sqrt(|x|^2 - 2 x.c + |c|^2)``: same selection, no temporary."""
    if cluster_center is None:
        return
    sq = getattr(self, "_sq", None)
    if sq is None or sq.shape[0] != self.features.shape[0]:
        sq = (self.features * self.features).sum(1)
        self._sq = sq
    center = self.features[cluster_center].squeeze()
    d2 = torch.addmv(sq, self.features, center, alpha=-2.0)
    d2 += center @ center
    distances = d2.clamp_min_(0).sqrt_().unsqueeze(1)
    if self.min_distances is None:
        self.min_distances = distances
    else:
        self.min_distances = torch.minimum(self.min_distances, distances)


def build_model(args: argparse.Namespace) -> Patchcore:
    """anomalib Patchcore (lite0, blocks.2 + blocks.4) with our teacher weights and chosen pre-processing."""
    mean, std = IMAGENET if args.norm == "imagenet" else LITE0
    size = (args.size, args.size)
    steps: list[Any] = [Resize(size, antialias=True)]
    if args.center_crop:
        steps.append(CenterCrop((args.center_crop, args.center_crop)))
    steps.append(Normalize(mean=mean, std=std))
    if args.norm == "imagenet":
        # anomalib's own default pre-processor, to check that the one built above is the same
        ref = Patchcore.configure_pre_processor(
            image_size=size, center_crop_size=(args.center_crop,) * 2 if args.center_crop else None
        )
        assert repr(ref.transform) == repr(Compose(steps)), (ref.transform, steps)
    model = Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=("blocks.2", "blocks.4"),
        pre_trained=False,  # the hub is offline; our weights are loaded below
        coreset_sampling_ratio=args.coreset_ratio,
        num_neighbors=args.num_neighbors,
        pre_processor=PreProcessor(transform=Compose(steps)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    fe = model.model.feature_extractor.feature_extractor
    path = lite0_weights_path()
    sd = lite0_filter_fn(torch.load(path, map_location="cpu", weights_only=True))
    own = fe.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing:
        raise RuntimeError(f"teacher weights miss {len(missing)} keys, e.g. {missing[:3]}")
    fe.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)
    log.info("teacher weights: %s (%d tensors, %d unused)", path, len(own), len(unexpected))
    return model


def batches(dataset: Any, indices: list[int], transform: Any, batch_size: int, desc: str):
    """Yield ``(indices, images [B,3,H,W], masks [B,H,W] or None)`` through the pre-processor."""
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, mininterval=5.0):
        chunk = indices[start : start + batch_size]
        images, masks = [], []
        for i in chunk:
            item = dataset[i]
            if item.gt_mask is None:
                images.append(transform(item.image))
            else:
                image, mask = transform(item.image, item.gt_mask)
                images.append(image)
                masks.append(torch.as_tensor(mask))
        yield chunk, torch.stack(images), torch.stack(masks) if masks else None


def anomalib_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    sel: list[int],
    val_sel: list[int],
) -> dict:
    """anomalib's post-processing and metric classes, as its ``Engine.test`` applies them.

    ``PostProcessor`` takes its min/max and thresholds from the validation images ``val_sel`` (the test
    set itself for ``val_split_mode=same_as_test``, the other half for ``from_test``) and normalises the
    test outputs with them (clamped to [0, 1]); the metrics then see the normalised values. Without it,
    torchmetrics would apply a sigmoid to raw distances (saturating at 1.0).
    """
    pp = PostProcessor()
    for s in range(0, len(val_sel), 64):
        ix = torch.as_tensor(val_sel[s : s + 64])
        pp.on_validation_batch_end(
            None,
            None,
            SimpleNamespace(
                pred_score=scores[ix], gt_label=labels[ix], anomaly_map=maps[ix], gt_mask=masks[ix].bool()
            ),
        )
    pp.on_validation_epoch_end(None, None)
    ix = torch.as_tensor(sel)
    batch = SimpleNamespace(
        pred_score=scores[ix].clone(),
        anomaly_map=maps[ix].clone(),
        gt_label=labels[ix],
        gt_mask=masks[ix].bool(),
        pred_label=None,
        pred_mask=None,
    )
    pp.normalize_batch(batch)
    out = {}
    image = AUROC(fields=["pred_score", "gt_label"])
    image.update(batch)
    out["image_auroc"] = float(image.compute())
    pixel = AUROC(fields=["anomaly_map", "gt_mask"])
    pro = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    for s in range(0, len(sel), 64):
        b = SimpleNamespace(anomaly_map=batch.anomaly_map[s : s + 64], gt_mask=batch.gt_mask[s : s + 64])
        pixel.update(b)
        pro.update(b)
    out["pixel_auroc"] = float(pixel.compute())
    out["aupro_0.3"] = float(pro.compute())
    return out


def our_metrics(scores: np.ndarray, labels: np.ndarray, full_maps: list, full_masks: list) -> dict:
    px = pixel_metrics(full_maps, full_masks, fpr_limit=0.3)
    return {
        "image_auroc": roc_auc(scores, labels),
        "pixel_auroc": px["pixel_auroc"],
        "aupro_0.3": px["aupro"],
    }


def compare_embeddings(args: argparse.Namespace, test_ds: Any, n: int) -> dict:
    """Patch embeddings of our run (``--ours``) vs anomalib's on the first ``n`` test images.

    Three pipelines with the same lite0 weights and normalisation (mean = std = 0.5): ours
    (``engines.preprocess`` + ``Teacher`` + ``JointEmbedder``), anomalib's (antialiased bilinear
    ``Resize`` + ``TimmFeatureExtractor`` + ``AvgPool2d(3, 1, 1)`` counting zero padding + bilinear
    upsampling), and a hybrid: anomalib's feature path on OUR resized input, which isolates the resize.
    Reported: ``|a - b| / |b|`` over all positions, over the border ring of the grid (2 positions wide)
    and over the interior.
    """
    from engines.preprocess import model_inputs, preprocess_batch
    from trainer.inference import frames_to_tensor
    from trainer.runs import load_run

    our_model, info = load_run(args.ours)
    our_model.eval()
    spec = info.preprocess
    images = [read_image(Path(p)) for p in list(test_ds.samples.image_path)[:n]]
    batch, geoms = preprocess_batch(images, spec)
    inputs, _ = model_inputs(batch, geoms, spec)
    x_ours = frames_to_tensor(inputs)  # [N, 3, H, W] in 0..255
    args.norm = "lite0"
    ref = build_model(args).model.eval()
    tf = Compose([Resize((args.size, args.size), antialias=True)])
    x_anom = torch.stack([tf(test_ds[i].image) for i in range(n)]) * 255.0
    with torch.no_grad():
        ours = our_model.embed(our_model.teacher(our_model.teacher.normalize(x_ours)))[0]
        ours = ours.permute(0, 3, 1, 2)

        def anomalib_embed(x: torch.Tensor) -> torch.Tensor:
            feats = ref.feature_extractor((x / 255.0 - 0.5) / 0.5)
            return ref.generate_embedding({k: ref.feature_pooler(v) for k, v in feats.items()})

        anom = anomalib_embed(x_anom)
        hybrid = anomalib_embed(x_ours)
    h, w = ours.shape[-2:]
    border = torch.ones(h, w, dtype=torch.bool)
    border[2:-2, 2:-2] = False

    def rel(a: torch.Tensor, b: torch.Tensor) -> dict:
        d = (a - b).pow(2).sum(1)
        ref_sq = b.pow(2).sum(1)
        return {
            "all": float((d.sum() / ref_sq.sum()).sqrt()),
            "border": float((d[:, border].sum() / ref_sq[:, border].sum()).sqrt()),
            "interior": float((d[:, ~border].sum() / ref_sq[:, ~border].sum()).sqrt()),
        }

    return {
        "n_images": n,
        "input_mean_abs_diff_0_255 (ours vs anomalib resize)": float((x_ours - x_anom).abs().mean()),
        "ours_vs_anomalib": rel(ours, anom),
        "ours_vs_hybrid (pooling/upsampling only)": rel(ours, hybrid),
        "hybrid_vs_anomalib (resize only)": rel(hybrid, anom),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON (outside the repo)")
    ap.add_argument("--train", choices=["all", "fit"], default="all")
    ap.add_argument("--calib-fraction", type=float, default=0.2)
    ap.add_argument("--min-calib", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="split seed (fit) and torch/numpy seed")
    ap.add_argument("--norm", choices=["imagenet", "lite0"], default="imagenet")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--center-crop", type=int, default=0, help="0 = off (anomalib 2.7 default)")
    ap.add_argument("--coreset-ratio", type=float, default=0.01)
    ap.add_argument("--num-neighbors", type=int, default=9, help="anomalib's image-score re-weighting")
    ap.add_argument("--half-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit-train", type=int, default=0, help="smoke test: first N train images only")
    ap.add_argument(
        "--ours",
        type=Path,
        default=None,
        help="evaluate this masf-train run (its own scores and maps) the same way, instead of anomalib",
    )
    ap.add_argument(
        "--compare-embeddings",
        type=int,
        default=0,
        metavar="N",
        help="with --ours: only compare patch embeddings (ours vs anomalib) on N test images",
    )
    ap.add_argument(
        "--pool-exclude-pad",
        action="store_true",
        help="diagnostic: 3x3 aggregation without counting zero padding (as our JointEmbedder)",
    )
    ap.add_argument("--exact-coreset", action="store_true", help="anomalib's own (slow) distance update")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if not args.exact_coreset:
        KCenterGreedy.update_distances = fast_update_distances
    started = datetime.now(UTC)
    t0 = time.perf_counter()

    root = args.data
    defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")

    def folder(seed: int | None, val_split_mode: str) -> Folder:
        dm = Folder(
            name=root.name,
            root=root,
            normal_dir="train/good",
            abnormal_dir=[f"test/{d}" for d in defects],
            normal_test_dir="test/good",
            mask_dir=[f"ground_truth/{d}" for d in defects],
            val_split_mode=val_split_mode,
            seed=seed,
        )
        dm.setup()
        return dm

    full = folder(None, "none")
    train_ds, test_ds = full.train_data, full.test_data
    train_paths = [str(Path(p).resolve()) for p in train_ds.samples.image_path]
    if args.train == "fit":
        split = split_train_calib(scan_train(root), root, args.calib_fraction, args.min_calib, seed=args.seed)
        keep = {str(p.resolve()) for p in split.train}
        train_idx = [i for i, p in enumerate(train_paths) if p in keep]
        assert len(train_idx) == len(split.train), (len(train_idx), len(split.train))
    else:
        train_idx = list(range(len(train_paths)))
    if args.limit_train:
        train_idx = train_idx[: args.limit_train]
    log.info("train images: %d (%s); test images: %d", len(train_idx), args.train, len(test_ds))
    if args.compare_embeddings:
        if args.ours is None:
            ap.error("--compare-embeddings needs --ours RUN")
        res = compare_embeddings(args, test_ds, args.compare_embeddings)
        log.info("embeddings: %s", json.dumps(res))
        (args.out / "compare_embeddings.json").write_text(json.dumps(res, indent=2))
        return 0

    test_paths = [str(Path(p).resolve()) for p in test_ds.samples.image_path]
    n_test = len(test_ds)
    scores = torch.empty(n_test)
    maps: list[torch.Tensor] = [None] * n_test  # type: ignore[list-item]
    masks: list[torch.Tensor] = [None] * n_test  # type: ignore[list-item]
    full_maps_ours: dict[int, np.ndarray] = {}
    if args.ours is None:
        model = build_model(args)
        transform = model.pre_processor.transform
        torch_model = model.model
        if args.pool_exclude_pad:
            torch_model.feature_pooler = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        torch_model.train()
        with torch.no_grad():
            for _, images, _ in batches(train_ds, train_idx, transform, args.batch_size, "train features"):
                torch_model(images)
        t_feat = time.perf_counter()
        n_emb = sum(e.shape[0] for e in torch_model.embedding_store)
        log.info("coreset: %d embeddings of %d channels", n_emb, torch_model.embedding_store[0].shape[1])
        model.fit()  # anomalib's coreset subsampling
        t_fit = time.perf_counter()
        bank = tuple(torch_model.memory_bank.shape)
        log.info("bank %s, coreset %.0f s", bank, t_fit - t_feat)
        torch_model.eval()
        with torch.no_grad():
            for idx, images, mk in batches(test_ds, list(range(n_test)), transform, args.batch_size, "test"):
                pred = torch_model(images)
                scores[idx] = pred.pred_score.float()
                for j, i in enumerate(idx):
                    maps[i] = pred.anomaly_map[j, 0].float()
                    masks[i] = mk[j].reshape(mk[j].shape[-2:])
        name = f"ref_{args.train}_{args.norm}_crop{args.center_crop}_k{args.num_neighbors}"
        name += "_excludepad" if args.pool_exclude_pad else ""
    else:
        # our trained run: its own image score and model-frame map (256 x 256 stretch for the repro
        # config) for anomalib's metrics, its own map in the original frame for ours
        from trainer.inference import predict_files
        from trainer.runs import load_run

        our_model, info = load_run(args.ours)
        our_model.eval()
        size = tuple(int(x) for x in (info.preprocess.height, info.preprocess.width))
        mask_tf = Compose([Resize(size, antialias=True)])
        for idx, _, mk in batches(test_ds, list(range(n_test)), mask_tf, args.batch_size, "masks"):
            for j, i in enumerate(idx):
                masks[i] = mk[j].reshape(mk[j].shape[-2:])
        index = {p: i for i, p in enumerate(test_paths)}
        results = predict_files(
            our_model, [Path(p) for p in test_paths], info.preprocess, torch.device("cpu"), 8, True, "ours"
        )
        for path, _, pred in results:
            i = index[str(Path(path).resolve())]
            scores[i] = float(pred.score)
            maps[i] = torch.as_tensor(np.asarray(pred.anomaly_map, dtype=np.float32))
            full_maps_ours[i] = pred.geometry.to_original(pred.anomaly_map).astype(np.float32)
        t_feat = t_fit = time.perf_counter()
        n_emb, bank = 0, tuple(int(n) for n in info.meta.get("bank_sizes", []) or [])
        train_idx = list(info.meta["data"]["split"]["train"])
        name = f"ours_{Path(args.ours).name}"
    t_test = time.perf_counter()
    labels = torch.as_tensor(test_ds.samples.label_index.to_numpy(), dtype=torch.long)

    # our metrics: full-resolution masks from the trainer's own reader, maps resized to each image
    ours_by_path = {str(s.path.resolve()): s for s in scan_test(root)}
    full_maps, full_masks, types = [], [], []
    for i, p in enumerate(test_paths):
        s = ours_by_path[p]
        h, w = read_image(s.path).shape[:2]
        if i in full_maps_ours:
            full_maps.append(full_maps_ours[i])
        else:
            full_maps.append(cv2.resize(maps[i].numpy(), (w, h), interpolation=cv2.INTER_LINEAR))
        full_masks.append(read_mask(s.mask_path, (h, w)) if s.mask_path is not None else None)
        types.append(s.defect_type)
        assert s.label == int(labels[i]), p
    maps_t, masks_t = torch.stack(maps), torch.stack(masks)

    np.savez_compressed(
        args.out / f"{name}.npz",
        paths=np.array(test_paths),
        scores=scores.numpy(),
        labels=labels.numpy(),
        maps=maps_t.numpy().astype(np.float16),
    )

    def evaluate(sel: list[int], val_sel: list[int]) -> dict:
        ix = torch.as_tensor(sel)
        return {
            "n_test": len(sel),
            "n_val": len(val_sel),
            "anomalib": anomalib_metrics(scores, labels, maps_t, masks_t, sel, val_sel),
            "ours_full_resolution": our_metrics(
                scores[ix].numpy(),
                labels[ix].numpy(),
                [full_maps[i] for i in sel],
                [full_masks[i] for i in sel],
            ),
        }

    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {torch.get_num_threads()} threads, py {platform.python_version()}",
        "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__},
        "n_train": len(train_idx),
        "n_embeddings": n_emb,
        "bank": list(bank),
        "seconds": {"features": t_feat - t0, "coreset": t_fit - t_feat, "test": t_test - t_fit},
        "full_test": evaluate(list(range(len(test_ds))), list(range(len(test_ds)))),
    }
    log.info("full test: %s", json.dumps(result["full_test"]))
    halves = {}
    for seed in args.half_seeds:
        dm = folder(seed, "from_test")
        keep = {str(Path(p).resolve()) for p in dm.test_data.samples.image_path}
        val = {str(Path(p).resolve()) for p in dm.val_data.samples.image_path}
        halves[str(seed)] = evaluate(
            [i for i, p in enumerate(test_paths) if p in keep],
            [i for i, p in enumerate(test_paths) if p in val],
        )
        log.info("half seed %d: %s", seed, json.dumps(halves[str(seed)]))
    result["anomalib_half_test"] = halves
    for side in ("anomalib", "ours_full_resolution"):
        for key in ("image_auroc", "pixel_auroc", "aupro_0.3"):
            vals = [h[side][key] for h in halves.values()]
            if vals:
                result.setdefault("half_summary", {}).setdefault(side, {})[key] = {
                    "mean": float(np.mean(vals)),
                    "min": float(np.min(vals)),
                    "max": float(np.max(vals)),
                }
    per_defect = {}
    for d in defects:
        sel = [i for i, t in enumerate(types) if t in (d, "good")]
        per_defect[d] = roc_auc(scores[sel].numpy(), labels[sel].numpy())
    result["per_defect_image_auroc"] = per_defect
    result["seconds"]["total"] = time.perf_counter() - t0
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    log.info("wrote %s", args.out / f"{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
