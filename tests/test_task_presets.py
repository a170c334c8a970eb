"""Task presets beyond classification (detection, action, captioning, segmentation) on tiny configurations.

Each preset is built through its real ``build`` with its reduced config (``zoo.reduced``:
fewer layers, smaller widths, small inputs): the same code path as the full-size preset.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import DetrForObjectDetection, SegformerForSemanticSegmentation

from clip_inr_standin import StandinINR
from nvp_export.backbone import temporal_indices
from nvp_export.fidelity.task_agreement import box_agreement, caption_agreement, mean_iou, relative_error
from nvp_export.route.adapt import AdaptConfig
from nvp_export.route.cka import CKAConfig, cka_matrix, linear_cka, positions, sample_clips, sample_indices
from nvp_export.route.losses import FeatureLoss
from nvp_export.route.multipathway import (
    FitConfig,
    PathwayAdapter,
    decode_clips,
    fit_adapter,
    pathway_loss,
)
from nvp_export.route.task_adapt import adapt_route, adapt_task
from nvp_export.route.task_cost import macs, route_cost
from nvp_export.zoo import PRESETS, REDUCED, WeightsError, blip, detr_r50, i3d_r50, reduced, segformer_b0, slowfast_r50

pytestmark = pytest.mark.filterwarnings("ignore::nvp_export.backbone.RandomWeightsWarning")
torch.set_num_threads(1)  # the machine is shared; one thread avoids oversubscription stalls

SIZE = reduced.INPUT_SIZE  # backbone input (H, W) in the tests
FRAME = (32, 48)  # the stand-in INR's frames, deliberately not the backbone's size


tiny_detr, tiny_slowfast, tiny_i3d, tiny_blip, tiny_segformer = (
    REDUCED[name] for name in ("detr_r50", "slowfast_r50", "i3d_r50", "blip", "segformer_b0")
)
TINY = REDUCED


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {name: make() for name, make in TINY.items()}


def sample_input(bb, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = bb.preprocess.num_frames
    shape = (n, 3, *FRAME) if t == 1 else (n, 3, t, *FRAME)
    return bb.preprocess(torch.rand(shape, generator=g))


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape
        assert torch.equal(a, b) if not a.is_floating_point() else torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)


def test_presets_are_registered():
    assert set(TINY) <= set(PRESETS)


@pytest.mark.parametrize("name", list(TINY))
def test_prefix_then_suffix_is_the_full_forward(backbones, name):
    bb = backbones[name]
    x = sample_input(bb)
    with torch.no_grad():
        full = bb(x)
        for p in bb.point_names:
            feats = bb.prefix(x, p)
            shapes = bb.point(p).pathway_shapes
            got = [f.shape[1:] for f in (feats if isinstance(feats, (list, tuple)) else [feats])]
            assert [tuple(s) for s in got] == [tuple(s) for s in shapes]
            assert_same(bb.suffix(feats, p), full)


def test_detr_stages_match_transformers_forward(backbones):
    bb = backbones["detr_r50"]
    x = sample_input(bb)
    detr = bb.stages["detector"].detr
    assert isinstance(detr, DetrForObjectDetection)
    with torch.no_grad():
        logits, boxes = bb(x)
        ref = detr(pixel_values=x)
    torch.testing.assert_close(logits, ref.logits)
    torch.testing.assert_close(boxes, ref.pred_boxes)


def test_segformer_stages_match_transformers_forward(backbones):
    bb = backbones["segformer_b0"]
    x = sample_input(bb)
    assert isinstance(bb.model, SegformerForSemanticSegmentation)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), bb.model(pixel_values=x).logits)


def test_blip_captions_match_transformers_generate(backbones):
    bb = backbones["blip"]
    x = sample_input(bb)
    model = bb.stages["caption"].model
    with torch.no_grad():
        ids = bb(x)
        ref = model.generate(pixel_values=x, max_new_tokens=blip.MAX_TOKENS, do_sample=False, num_beams=1)
    assert torch.equal(ids, ref)
    captions = bb.postprocess(ids)
    assert len(captions) == 2 and all(0 < len(c) <= blip.MAX_TOKENS for c in captions)
    assert all(t not in bb.special_ids for c in captions for t in c)


def test_detr_boxes_scale_to_original_pixels(backbones):
    bb = backbones["detr_r50"]
    k = len(bb.labels)
    logits = torch.full((1, 3, k + 1), -10.0)
    logits[0, 0, 1] = 10.0  # query 0: confidently class 1 ("person")
    logits[0, 1, -1] = 10.0  # query 1: no object
    logits[0, 2] = 0.0  # query 2: unsure, every class equally likely
    boxes = torch.tensor([[[0.5, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1]]])
    (det,) = bb.postprocess((logits, boxes), image_size=(180, 320), threshold=0.7)
    torch.testing.assert_close(det.boxes, torch.tensor([[80.0, 0.0, 240.0, 90.0]]))
    assert det.labels.tolist() == [1] and det.names == ["person"] and det.scores[0] > 0.99


def test_detr_set_loss_is_permutation_invariant_and_lowest_at_its_own_predictions(backbones):
    bb = backbones["detr_r50"]
    with torch.no_grad():
        out = bb(sample_input(bb))
    targets = bb.pseudo_targets(out, threshold=0.0)  # every query's own class and box
    own = bb.task_loss(out, targets)
    perm = [{k: v.flip(0) for k, v in t.items()} for t in targets]
    torch.testing.assert_close(bb.task_loss(out, perm), own)
    g = torch.Generator().manual_seed(3)
    moved = [
        {
            "class_labels": t["class_labels"],
            "boxes": (t["boxes"] + 0.2 * torch.rand(t["boxes"].shape, generator=g)).clamp(0.01, 0.99),
        }
        for t in targets
    ]
    assert bb.task_loss(out, moved) > own
    # It is differentiable: usable as L_task in joint optimisation.
    logits = out[0].clone().requires_grad_(True)
    bb.task_loss((logits, out[1]), targets).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_segformer_masks_at_original_resolution(backbones):
    bb = backbones["segformer_b0"]
    logits = torch.zeros(2, 5, 16, 24)
    logits[0, 3] = 1.0
    logits[1, 2, :, :12] = 1.0
    logits[1, 4, :, 12:] = 1.0
    masks = bb.postprocess(logits, image_size=(180, 320))
    assert masks.shape == (2, 180, 320) and masks.dtype == torch.int64
    assert (masks[0] == 3).all()
    assert (masks[1, :, :150] == 2).all() and (masks[1, :, 170:] == 4).all()


@pytest.mark.parametrize(
    "module,config,expected_params",
    [
        (slowfast_r50, slowfast_r50.SlowFastConfig(), 34_566_488),
        (i3d_r50, i3d_r50.I3DConfig(), 28_043_472),
    ],
)
def test_full_size_video_models_have_pytorchvideo_parameter_counts(module, config, expected_params):
    net = module.SlowFast(config) if module is slowfast_r50 else module.I3D(config)
    assert sum(p.numel() for p in net.parameters()) == expected_params  # 34.57M / 28.04M published


def test_video_models_use_pytorchvideo_key_names():
    sf = slowfast_r50.SlowFast(slowfast_r50.SlowFastConfig(width=16, depths=(1, 1, 1, 1))).state_dict()
    for key in [
        "blocks.0.multipathway_blocks.0.conv.weight",
        "blocks.0.multipathway_blocks.1.conv.weight",
        "blocks.1.multipathway_blocks.1.res_blocks.0.branch2.conv_a.weight",
        "blocks.2.multipathway_blocks.0.res_blocks.0.branch1_conv.weight",
        "blocks.3.multipathway_fusion.conv_fast_to_slow.weight",
        "blocks.6.proj.weight",
    ]:
        assert key in sf
    assert not any(k.startswith("blocks.4.multipathway_fusion") or k.startswith("blocks.5.") for k in sf)
    assert sf["blocks.0.multipathway_blocks.1.conv.weight"].shape[2:] == (5, 7, 7)
    assert sf["blocks.0.multipathway_fusion.conv_fast_to_slow.weight"].shape == (4, 2, 7, 1, 1)
    i3d = i3d_r50.I3D(i3d_r50.I3DConfig(width=8, depths=(2, 2, 2, 2))).state_dict()
    assert "blocks.0.conv.weight" in i3d and "blocks.6.proj.weight" in i3d
    assert not any(k.startswith("blocks.2.") for k in i3d)  # the parameter-free temporal max-pool
    assert i3d["blocks.3.res_blocks.0.branch2.conv_a.weight"].shape[2:] == (3, 1, 1)
    assert i3d["blocks.3.res_blocks.1.branch2.conv_a.weight"].shape[2:] == (1, 1, 1)
    assert i3d["blocks.5.res_blocks.0.branch2.conv_a.weight"].shape[2:] == (1, 1, 1)


@pytest.mark.parametrize("name", ["slowfast_r50", "i3d_r50"])
def test_pytorchvideo_checkpoint_loads_unchanged(backbones, name, tmp_path):
    module = slowfast_r50 if name == "slowfast_r50" else i3d_r50
    config = (
        slowfast_r50.SlowFastConfig(frames=8, crop=SIZE, width=16, depths=(1, 1, 1, 1), num_classes=10)
        if name == "slowfast_r50"
        else i3d_r50.I3DConfig(frames=8, crop=SIZE, width=8, depths=(1, 1, 1, 1), num_classes=10)
    )
    torch.manual_seed(5)
    donor = module.SlowFast(config) if name == "slowfast_r50" else module.I3D(config)
    state = {k: (torch.randn_like(v) * 0.1 if v.is_floating_point() else v) for k, v in donor.state_dict().items()}
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()}
    path = tmp_path / "ckpt.pyth"
    torch.save({"model_state": state, "cfg": "kept as pytorchvideo does"}, path)
    bb = module.build(weights=path, config=config)
    assert bb.pretrained
    donor.load_state_dict(state, strict=True)
    donor.eval()
    x = sample_input(bb)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), donor(x))
    del state["blocks.6.proj.weight"]
    torch.save({"model_state": state}, path)
    with pytest.raises(WeightsError, match="missing"):
        module.build(weights=path, config=config)


def test_slowfast_pathways_sample_frames_like_packpathway(backbones):
    assert temporal_indices(32, 8).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    bb = backbones["slowfast_r50"]
    slow, fast = bb.point("stem").shape
    assert fast[1] == 8 and slow[1] == 2 and slow[0] != fast[0]


def test_pathway_adapter_feeds_each_pathway_at_its_rate_and_size(backbones):
    bb = backbones["slowfast_r50"]
    point = bb.point("res2")
    adapter = PathwayAdapter(12, point)
    x = torch.randn(2, 12, 8, 10, 14)
    slow, fast = adapter(x)
    assert tuple(slow.shape[1:]) == point.shape[0] and tuple(fast.shape[1:]) == point.shape[1]
    # The slow pathway's adapter sees exactly the frames PackPathway gives the slow pathway.
    expect = adapter.adapters[0](x.index_select(2, temporal_indices(8, point.shape[0][1])))
    torch.testing.assert_close(slow, expect)
    # Each frame is resized then mapped by the same 1x1 conv: the runtime kernel's semantics, checked in float64.
    conv = adapter.adapters[1].convs[0]
    frame = torch.nn.functional.interpolate(
        x[:, :, 3].double(), size=point.shape[1][-2:], mode="bilinear", align_corners=False
    )
    ref = (
        torch.einsum("oc,nchw->nohw", conv.weight.double()[:, :, 0, 0], frame) + conv.bias.double()[None, :, None, None]
    )
    torch.testing.assert_close(fast[:, :, 3].double(), ref, rtol=1e-5, atol=1e-5)
    single = PathwayAdapter(12, backbones["i3d_r50"].point("res3"))(x)
    assert isinstance(single, torch.Tensor) and single.shape[2] == 4


@pytest.mark.parametrize(
    "name,tap,point",
    [
        ("slowfast_r50", "block2", "stem"),
        ("i3d_r50", "block1", "res3"),
        ("detr_r50", "block1", "stage2"),
        ("segformer_b0", "block2", "stage2"),
        ("blip", "block1", "layer1"),
    ],
)
def test_adapter_fit_from_an_inr_lowers_the_feature_loss(backbones, name, tap, point):
    bb = backbones[name]
    t = bb.preprocess.num_frames
    inr = StandinINR(num_frames=max(t, 8) + 4, size=FRAME)
    frames = inr.frames()
    if t > 1:
        clips = torch.stack([torch.arange(s, s + t) for s in range(0, inr.num_frames - t + 1, 2)])
        pixels = frames[clips].permute(0, 2, 1, 3, 4)
    else:
        clips = torch.arange(inr.num_frames)
        pixels = frames
    with torch.no_grad():
        taps = decode_clips(inr, clips, tap)
        targets = bb.prefix(bb.preprocess(pixels), point)
    adapter = PathwayAdapter(taps.shape[1], bb.point(point))
    history = fit_adapter(
        adapter, taps, targets, FitConfig(epochs=6, lr=1e-2, batch_size=2, init="random", progress=False)
    )
    assert min(history[1:]) < 0.8 * history[0]
    # The closed-form (ridge) start has a lower MSE than a few random-start epochs reach.
    lstsq = PathwayAdapter(taps.shape[1], bb.point(point))
    fit_adapter(lstsq, taps, targets, FitConfig(epochs=0, progress=False))
    mse_only = FitConfig(loss=FeatureLoss(1.0, 0.0, 0.0))
    with torch.no_grad():
        assert pathway_loss(lstsq(taps), targets, mse_only.loss) < pathway_loss(adapter(taps), targets, mse_only.loss)
        out = bb.suffix(adapter(taps), point)
        ref = bb(bb.preprocess(pixels))
    as_list = lambda o: list(o) if isinstance(o, (tuple, list)) else [o]  # noqa: E731
    assert [o.shape for o in as_list(out)] == [r.shape for r in as_list(ref)]


def test_route_cost_counts_a_cheaper_nvp_path(backbones):
    bb = backbones["slowfast_r50"]
    inr = StandinINR(num_frames=8, size=FRAME)
    cost = route_cost(inr, bb, "block1", "res3")
    adapter = PathwayAdapter(inr.tap_shapes()["block1"][0], bb.point("res3"))
    assert (
        cost.adapter_params
        == adapter.num_parameters()
        == sum(a.convs[0].weight.numel() + a.convs[0].bias.numel() for a in adapter.adapters)
    )
    assert 0 < cost.macs_nvp < cost.macs_full and cost.macs_ratio < 1
    # Resizes count at 4 MACs per output element.
    x = torch.randn(1, 4, 10, 10)
    assert macs(lambda: torch.nn.functional.interpolate(x, size=(20, 30), mode="bilinear")) == 4 * 4 * 20 * 30
    conv = torch.nn.Conv2d(4, 6, 1)
    assert macs(conv, x) == 4 * 6 * 100


def test_box_agreement():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_agreement([a], [a.flip(0)]) == pytest.approx(1.0)
    shifted = a + torch.tensor([5.0, 0.0, 5.0, 0.0])  # half overlap: IoU 50/150
    assert box_agreement([shifted], [a]) == pytest.approx(1 / 3)
    assert box_agreement([a[:1]], [a]) == pytest.approx(0.5)  # a missed box counts as IoU 0
    assert box_agreement([a[:0]], [a[:0]]) == 1.0


def test_mean_iou_against_a_direct_count():
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 4, (2, 20, 30), generator=g)
    pred = torch.where(torch.rand(ref.shape, generator=g) < 0.8, ref, torch.randint(0, 4, ref.shape, generator=g))
    ious = [((pred == c) & (ref == c)).sum().item() / ((pred == c) | (ref == c)).sum().item() for c in range(4)]
    assert mean_iou(pred, ref, 4) == pytest.approx(sum(ious) / 4)
    assert mean_iou(ref, ref, 4) == 1.0


def test_caption_agreement_and_relative_error():
    same = caption_agreement([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]])
    assert same["bleu4"] == pytest.approx(1.0) and same["token_f1"] == 1.0
    half = caption_agreement(["a dog runs on grass"], ["a cat sits on grass"])
    assert 0 < half["bleu4"] < 1 and half["token_f1"] == pytest.approx(0.6)
    x = torch.randn(3, 10)
    assert relative_error(x, x) == 0.0
    assert relative_error(x * 1.1, x) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize(
    "name,tap,point",
    [
        ("slowfast_r50", "block1", "res2"),
        ("detr_r50", "block2", "stem"),
        ("segformer_b0", "block2", "stage1"),
        ("blip", "block1", "patch_embed"),
    ],
)
def test_adapt_route_trains_and_reports_fidelity_and_cost(backbones, name, tap, point):
    bb = backbones[name]
    inr = StandinINR(num_frames=12, size=FRAME)
    route = adapt_route(
        inr, inr.frames(), bb, tap, point, FitConfig(epochs=2, lr=1e-3, batch_size=2, progress=False), clip_stride=2
    )
    assert min(route.history) <= route.history[0]
    assert route.cost.macs_nvp < route.cost.macs_full and route.cost.adapter_params == route.adapter.num_parameters()
    expected = {
        "slowfast_r50": "top1_agreement",
        "detr_r50": "box_iou_agreement",
        "segformer_b0": "miou",
        "blip": "bleu4",
    }[name]
    assert 0.0 <= route.fidelity[expected] <= 1.0
    # The adapter reproduces the point's features better than a bias-only adapter would.
    assert route.fidelity["features_rel_error"] < route.fidelity["features_rel_error_bias_only"]
    if name == "blip":
        assert route.fidelity["vision_rel_error"] >= 0
    with pytest.raises(ValueError, match="no tap"):
        adapt_route(inr, inr.frames(), bb, "nope", point)


def test_detr_loads_a_state_dict_file_and_rejects_bad_weights(backbones, tmp_path):
    bb = backbones["detr_r50"]
    detr = bb.stages["detector"].detr
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in detr.state_dict().items()}
    path = tmp_path / "detr.pt"
    torch.save(state, path)
    loaded = detr_r50.build(weights=path, config=detr.config, input_size=SIZE)
    assert loaded.pretrained
    x = sample_input(bb)
    reference = copy.deepcopy(bb)  # the fixture stays as it is for other tests
    reference.stages["detector"].detr.load_state_dict(state)
    with torch.no_grad():
        assert not torch.allclose(loaded(x)[0], bb(x)[0])
        torch.testing.assert_close(loaded(x)[0], reference(x)[0])
    with pytest.raises(WeightsError, match="cannot load DETR"):
        detr_r50.build(weights=tmp_path, config=detr.config)  # a directory without a checkpoint
    with pytest.raises(WeightsError, match="save_pretrained directory"):
        segformer_b0.build(weights=path)
    with pytest.raises(WeightsError, match="cannot load BLIP"):
        blip.build(weights=tmp_path)


@pytest.mark.parametrize("name", ["slowfast_r50", "blip"])
def test_cka_of_clips_and_pathways_against_a_direct_computation(backbones, name):
    """One minibatch: each pathway's CKA equals linear_cka of row-aligned positions; a point scores their mean."""
    bb = backbones[name]
    t = bb.preprocess.num_frames
    inr = StandinINR(num_frames=max(t, 8) + 3, size=FRAME)
    frames = inr.frames()
    config = CKAConfig(frames=8, batch_size=8, grid=3)
    m = cka_matrix(inr, bb, frames, config)
    assert m.meta["batches"] == 1
    if t > 1:
        (sel,) = sample_clips(inr.num_frames, t, 1, config.seed)
    else:
        sel = sample_indices(inr.num_frames, 8, config.seed)
    pixels = frames[sel].transpose(0, 1)[None] if t > 1 else frames[sel]
    with torch.no_grad():
        feats = bb.features(bb.preprocess(pixels), bb.point_names)
        taps = inr.decode(sel, until=inr.tap_names[-1])
    for j, point in enumerate(bb.point_names):
        pathways = feats[point] if isinstance(feats[point], (list, tuple)) else [feats[point]]
        for i, tap in enumerate(inr.tap_names):
            per_pathway = []
            for y in pathways:
                if y.dim() == 5:  # (1, C, T_p, h, w): the INR frames this pathway sees, frame by frame
                    x = taps[tap][temporal_indices(t, y.shape[2])]
                    y = y[0].transpose(0, 1)
                else:
                    x = taps[tap]
                per_pathway.append(linear_cka(positions(x, 3), positions(y, 3)))
            assert m.values[i, j] == pytest.approx(np.mean(per_pathway), rel=1e-9, abs=1e-12)


def test_adapt_task_keeps_the_cheapest_candidate_about_as_good_as_the_best(backbones):
    bb = backbones["segformer_b0"]
    inr = StandinINR(num_frames=10, size=FRAME)
    config = AdaptConfig(
        epochs=1, candidates="per_point", select_tolerance=0.05, progress=False, cka=CKAConfig(frames=8)
    )
    result = adapt_task(inr, inr.frames(), bb, config)
    assert sorted(c.route.point for c in result.candidates) == sorted(bb.point_names)
    assert all(c.scored_on == "held-out samples" for c in result.candidates)  # 10 frames: 2 held out
    best = min(c.score for c in result.candidates)
    chosen = result.chosen
    assert chosen.score <= best + 0.05
    assert all(
        chosen.route.cost.macs_ratio <= c.route.cost.macs_ratio for c in result.candidates if c.score <= best + 0.05
    )
    for c in result.candidates:
        assert c.cka == pytest.approx(
            result.cka.values[result.cka.taps.index(c.route.tap), result.cka.points.index(c.route.point)]
        )
        fid = c.route.fidelity
        assert c.score == pytest.approx(fid["holdout_features_rel_error"] / fid["holdout_features_rel_error_bias_only"])
    metrics = result.metrics()
    assert metrics["candidates_trained"] == 3 and metrics["cka_rank"] == chosen.cka_rank
    assert "segformer_b0" in result.summary() and "output agreement" in result.summary()
