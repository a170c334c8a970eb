"""Our SlowFast-R50 / I3D-R50 against pytorchvideo itself: same parameter names, same outputs.

``zoo.slowfast_r50`` and ``zoo.i3d_r50`` claim that pytorchvideo's ``SLOWFAST_8x8_R50.pyth`` /
``I3D_8x8_R50.pyth`` state dicts load unchanged. Here pytorchvideo's own hub builders make the
reference models with fresh random weights (BN running statistics included); their state dict is
saved as a ``.pyth`` is (``{"model_state": ...}``), loaded through our ``build(weights=path)`` and both
models run on one random clip in float64.

pytorchvideo needs torchvision, which has no build for the project's CPU-only torch, so this file
runs in a separate environment with PyPI's default (CUDA) torch, which runs on a CPU; see
docs/tasks.md ("pytorchvideo parity") for the versions and the command.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "pytorchvideo",
    reason="needs pytorchvideo, which does not import with the CPU-only torch build (no torchvision for it)",
)
from pytorchvideo.models.hub.resnet import i3d_r50 as pv_i3d_r50  # noqa: E402
from pytorchvideo.models.hub.slowfast import slowfast_r50 as pv_slowfast_r50  # noqa: E402

from nvp_export.zoo import i3d_r50, slowfast_r50  # noqa: E402

torch.set_num_threads(1)  # the machine is shared

# Spatial size of the compared forward passes: the checkpoints' 224 costs ~12x more for no
# extra coverage (no parameter depends on it). pytorchvideo's head pools use a fixed kernel
# sized for 224 (final map 7x7), so the reference is built with kernels covering the 2x2 map.
CROP = (64, 64)
FINAL = (CROP[0] // 32, CROP[1] // 32)
TOLERANCE = 1e-10  # max |ours - pytorchvideo| / max |pytorchvideo|, float64


def randomised(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every BN tensor (affine and running stats) random, convs and
    linears from pytorchvideo's own init; the model holds the same values afterwards."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, value in state.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var" or (leaf == "weight" and value.dim() == 1):  # BN: 1-D weight
            value.copy_(torch.rand(value.shape, generator=g) + 0.5)
        elif leaf in ("running_mean", "bias"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.1)
        elif leaf == "num_batches_tracked":
            value.fill_(int(torch.randint(1, 10_000, (), generator=g)))
    return state


def assert_same_parameters(ours: torch.nn.Module, theirs: dict[str, torch.Tensor]) -> None:
    own = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in theirs.items()}
    assert sorted(set(own) - set(ref)) == [] and sorted(set(ref) - set(own)) == []
    assert own == ref


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def load_through_build(module, config, state, tmp_path):
    path = tmp_path / "checkpoint.pyth"
    torch.save({"model_state": state}, path)
    bb = module.build(weights=path, config=config)
    assert bb.pretrained
    return bb.double()


def test_slowfast_r50_matches_pytorchvideo(tmp_path):
    torch.manual_seed(0)
    # slowfast_r50 = SLOWFAST_8x8_R50: depth 50, 400 classes, fusion kernel (7, 1, 1), alpha 4, beta_inv 8.
    reference = pv_slowfast_r50(head_pool_kernel_sizes=((8, *FINAL), (32, *FINAL))).eval()
    state = randomised(reference, seed=1)
    # Parameter names and shapes against our full-size (32 x 224 x 224) definition.
    assert_same_parameters(slowfast_r50.SlowFast(), state)

    bb = load_through_build(slowfast_r50, slowfast_r50.SlowFastConfig(frames=32, crop=CROP), state, tmp_path)
    clip = torch.rand(1, 3, 32, *CROP, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # pytorchvideo's models take [slow, fast]; its PackPathway (hub tutorial) gives the slow
    # pathway frames linspace(0, T - 1, T // alpha); ours packs a (N, 3, T, H, W) clip itself.
    slow = clip.index_select(2, torch.linspace(0, 31, 8).long())
    with torch.no_grad():
        expect = reference.double()([slow, clip])
        got = bb(clip)
    assert got.shape == expect.shape == (1, 400)
    err = relative_error(got, expect)
    print(f"slowfast_r50 max relative error {err:.2e}")
    assert err <= TOLERANCE


def test_i3d_r50_matches_pytorchvideo(tmp_path):
    torch.manual_seed(0)
    # i3d_r50 = I3D_8x8_R50: stem (5, 7, 7), stage-1 (2, 1, 1) max-pool, alternating inflated conv_a kernels.
    reference = pv_i3d_r50(head_pool_kernel_size=(4, *FINAL)).eval()
    state = randomised(reference, seed=3)
    assert_same_parameters(i3d_r50.I3D(), state)

    bb = load_through_build(i3d_r50, i3d_r50.I3DConfig(frames=8, crop=CROP), state, tmp_path)
    clip = torch.rand(1, 3, 8, *CROP, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        expect = reference.double()(clip)
        got = bb(clip)
    assert got.shape == expect.shape == (1, 400)
    err = relative_error(got, expect)
    print(f"i3d_r50 max relative error {err:.2e}")
    assert err <= TOLERANCE
