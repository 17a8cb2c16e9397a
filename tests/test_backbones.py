"""Tests for trainer.models.backbones: the lite0 / lite2 key remaps (proved on real photos), the teacher."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata

from trainer.errors import ConfigError
from trainer.models.backbones import (
    BACKBONES,
    Teacher,
    create_teacher,
    lite0_filter_fn,
    lite_filter_fn,
    lite_weights_path,
)

# variant -> (tensors in its weight file, its classification crop, least espresso probability)
LITE = {"tf_efficientnet_lite0": (296, 224, 0.9), "tf_efficientnet_lite2": (386, 260, 0.8)}


@functools.cache
def _lite_raw(name: str) -> dict[str, torch.Tensor]:
    return torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_raw() -> dict[str, torch.Tensor]:
    return _lite_raw("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_classifier(lite0_raw: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(lite0_filter_fn(lite0_raw, features_only=False), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def lite0_teacher() -> Teacher:
    return create_teacher("tf_efficientnet_lite0", pretrained=True)


def _classify_input(img: np.ndarray, crop: int = 224) -> torch.Tensor:
    """Bicubic resize of the shorter side to ``crop / 0.875``, centre crop ``crop``, RGB in [-1, 1]."""
    pil = Image.fromarray(img)
    w, h = pil.size
    scale = round(crop / 0.875) / min(w, h)
    pil = pil.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = pil.size
    left, top = (w - crop) // 2, (h - crop) // 2
    arr = np.asarray(pil.crop((left, top, left + crop, top + crop)), dtype=np.float32)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    return x / 127.5 - 1.0


# ---------------------------------------------------------------- lite0 remap


@pytest.mark.parametrize("name", list(LITE))
def test_lite_filter_fn_is_one_to_one(name: str) -> None:
    raw, count = _lite_raw(name), LITE[name][0]
    assert len(raw) == count
    full = lite_filter_fn(raw, name, features_only=False)
    target = timm.create_model(name, pretrained=False, num_classes=1000).state_dict()
    assert len(full) == count
    assert set(full) == set(target)
    for key, value in full.items():
        assert value.shape == target[key].shape, key
    # no tensor is used twice
    assert len({id(v) for v in full.values()}) == count
    # features_only drops exactly the head
    feats = lite_filter_fn(raw, name)
    dropped = set(full) - set(feats)
    assert dropped and all(k.split(".")[0] in ("conv_head", "bn2", "classifier") for k in dropped)
    feat_model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3))
    # blocks after out_index 3 are not part of the features model
    assert set(feat_model.state_dict()) <= set(feats)


def test_lite0_filter_fn_examples_and_errors() -> None:
    t = torch.zeros(1)
    sd = {
        "_conv_stem.weight": t,
        "_blocks.0._depthwise_conv.weight": t,
        "_blocks.0._project_conv.weight": t,
        "_blocks.3._expand_conv.weight": t,
        "_blocks.3._project_conv.weight": t,
        "_blocks.14._bn2.running_var": t,
        "_blocks.15._bn0.num_batches_tracked": t,
        "_fc.bias": t,
    }
    out = lite0_filter_fn(sd, features_only=False)
    assert set(out) == {
        "conv_stem.weight",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.2.0.conv_pw.weight",
        "blocks.2.0.conv_pwl.weight",
        "blocks.5.3.bn3.running_var",
        "blocks.6.0.bn1.num_batches_tracked",
        "classifier.bias",
    }
    assert "classifier.bias" not in lite0_filter_fn(sd)
    with pytest.raises(KeyError, match="unexpected key"):
        lite0_filter_fn({"features.0.weight": t})


@pytest.mark.parametrize("name", list(LITE))
def test_lite_classifies_real_photos(name: str) -> None:
    """The proof that each remap is right: ImageNet classes of real photos, at the variant's own crop."""
    _, crop, least = LITE[name]
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    model.load_state_dict(lite_filter_fn(_lite_raw(name), name, features_only=False), strict=True)
    with torch.no_grad():
        x = torch.cat([_classify_input(skdata.coffee(), crop), _classify_input(skdata.chelsea(), crop)])
        probs = model.eval()(x).softmax(dim=1)
    coffee, cat = probs
    assert int(coffee.argmax()) == 967  # espresso
    assert float(coffee[967]) > least
    top3 = set(cat.topk(3).indices.tolist())
    assert top3 & set(range(281, 286)), top3


# ---------------------------------------------------------------- lite2 remap


def test_lite_filter_fn_places_blocks_by_the_variants_depths() -> None:
    t = torch.zeros(1)
    # lite2's deeper stages: flat block 3 is the third block of stage 1 (lite0: stage 2's first)
    lite2 = lite_filter_fn({"_blocks.3._bn0.weight": t}, "tf_efficientnet_lite2")
    assert set(lite2) == {"blocks.1.2.bn1.weight"}
    assert set(lite0_filter_fn({"_blocks.3._bn0.weight": t})) == {"blocks.2.0.bn1.weight"}
    # lite0's 16 blocks end at 15: a 17th is an error, not a silent misplacement
    with pytest.raises(KeyError, match="16 blocks"):
        lite0_filter_fn({"_blocks.16._bn0.weight": t})


def test_lite2_teacher_maps() -> None:
    teacher = create_teacher("tf_efficientnet_lite2", pretrained=True)
    assert teacher.cfg == BACKBONES["tf_efficientnet_lite2"]
    with torch.no_grad():
        maps = teacher(teacher.normalize(torch.rand(1, 3, 256, 192) * 255))
    assert [tuple(m.shape) for m in maps] == [(1, 24, 64, 48), (1, 48, 32, 24), (1, 120, 16, 12)]


# ---------------------------------------------------------------- teacher


def test_lite0_teacher_maps_and_normalisation(lite0_teacher: Teacher) -> None:
    assert lite0_teacher.cfg == BACKBONES["tf_efficientnet_lite0"]
    x = torch.rand(1, 3, 256, 256) * 255
    with torch.no_grad():
        maps = lite0_teacher(lite0_teacher.normalize(x))
    assert [tuple(m.shape) for m in maps] == [(1, 24, 64, 64), (1, 40, 32, 32), (1, 112, 16, 16)]
    # [0, 255] -> [-1, 1]
    norm = lite0_teacher.normalize(torch.tensor([0.0, 127.5, 255.0]).view(1, 1, 3, 1).expand(1, 3, 3, 1))
    torch.testing.assert_close(norm[0, :, :, 0], torch.tensor([-1.0, 0.0, 1.0]).expand(3, 3))


def test_teacher_features_match_the_full_classifier(
    lite0_teacher: Teacher, lite0_classifier: torch.nn.Module
) -> None:
    """The features-only teacher carries the same (pretrained) weights as the classifier."""
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = lite0_classifier.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        got = lite0_teacher(x)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_teacher_is_frozen(lite0_teacher: Teacher) -> None:
    assert not any(p.requires_grad for p in lite0_teacher.parameters())
    parent = torch.nn.Sequential(lite0_teacher)
    parent.train()
    assert lite0_teacher.train() is lite0_teacher
    assert not any(m.training for m in lite0_teacher.modules())
    # BN statistics do not move in a "training" forward pass
    bn = next(m for m in lite0_teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    with torch.no_grad():
        lite0_teacher(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(bn.running_mean, before, atol=0, rtol=0)


def test_create_teacher_bad_name() -> None:
    with pytest.raises(ConfigError, match=r"backbone\.name"):
        create_teacher("resnet_does_not_exist", pretrained=False)


def test_create_teacher_local_safetensors_roundtrip(lite0_teacher: Teacher, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in lite0_teacher.backbone.state_dict().items()}, str(path))
    loaded = create_teacher("tf_efficientnet_lite0", pretrained=False, weights=path)
    for (k, a), (_, b) in zip(
        loaded.backbone.state_dict().items(), lite0_teacher.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_create_teacher_local_pth_in_original_naming(
    lite0_raw: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "lite0.pth"
    torch.save({"state_dict": lite0_raw}, path)
    loaded = create_teacher("tf_efficientnet_lite0", pretrained=False, weights=path)
    torch.testing.assert_close(
        loaded.backbone.state_dict()["conv_stem.weight"], lite0_raw["_conv_stem.weight"], atol=0, rtol=0
    )


def test_create_teacher_mismatched_weights_raise(lite0_raw: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    # keys of another model
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ConfigError, match="do not match"):
        create_teacher("tf_efficientnet_lite0", weights=other)
    # one tensor missing
    sd = lite0_filter_fn(lite0_raw)
    missing = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if k != "conv_stem.weight"}, str(missing))
    with pytest.raises(ConfigError, match="1 missing"):
        create_teacher("tf_efficientnet_lite0", weights=missing)
    # wrong shape
    bad_shape = tmp_path / "shape.safetensors"
    sd = {k: v.contiguous() for k, v in sd.items()}
    save_file({**sd, "conv_stem.weight": torch.zeros(32, 3, 5, 5)}, str(bad_shape))
    with pytest.raises(ConfigError, match=r"conv_stem\.weight has shape"):
        create_teacher("tf_efficientnet_lite0", weights=bad_shape)
    # not a weight file / absent
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load"):
        create_teacher("tf_efficientnet_lite0", weights=junk)
    with pytest.raises(ConfigError, match="not found"):
        create_teacher("tf_efficientnet_lite0", weights=tmp_path / "absent.pth")


def test_create_wide_resnet_random_weights() -> None:
    teacher = create_teacher("wide_resnet50_2", pretrained=False)
    assert teacher.cfg.channels == (256, 512, 1024)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        maps = teacher(teacher.normalize(torch.rand(1, 3, 64, 64) * 255))
    assert [tuple(m.shape) for m in maps] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4)]
