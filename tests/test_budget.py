"""Sizing to a budget in bits per pixel: the whole file, container and routes counted, at the issue's rates."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nvp_export.inr import (
    config_for_budget,
    container_bytes,
    from_config,
    make_config,
    quantise_inr,
    save_nvp,
    stored_bits,
)
from nvp_export.inr.budget import MIN_FC_DIM
from nvp_export.inr.hnerv import HNeRVEncoder
from nvp_export.route.task_aware import untrained_routes
from nvp_export.zoo import load_backbone

H, W, N = 180, 320, 64


def _written_bytes(cfg, routes=None, seed=0) -> int:
    """The size of a real file of ``cfg``: weights and embeddings drawn at random (no entropy coder's
    free lunch on zeros), quantised and coded, with ``routes`` of the INR."""
    g = torch.Generator().manual_seed(seed)
    inr = from_config(cfg)
    with torch.no_grad():
        for t in inr.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    arrays, meta, quantised = quantise_inr(inr)
    with tempfile.TemporaryDirectory() as d:
        return save_nvp(Path(d) / "x.nvp", quantised, arrays, meta, {}, routes=routes(quantised) if routes else ())


@pytest.mark.parametrize("bpp", [0.05, 0.1, 0.25, 0.5])
def test_a_64_frame_320x180_clip_reaches_each_rate(bpp):
    """The file lands within its budget and close below it: the entropy coder takes a little on random
    values, the rest is counted."""
    cfg = config_for_budget("hnerv", H, W, N, bpp=bpp)
    size = _written_bytes(cfg, seed=int(np.random.default_rng().integers(1 << 30)))
    budget = bpp * N * H * W / 8
    assert 0.75 * budget < size <= budget
    assert cfg.fc_dim >= MIN_FC_DIM


@pytest.mark.parametrize("bpp", [0.25, 0.5])
def test_the_routes_written_beside_the_inr_are_counted(bpp):
    backbones = [load_backbone("efficientnet_lite0")]

    def routes(inr):
        return untrained_routes(inr, backbones)

    alone = config_for_budget("hnerv", H, W, N, bpp=bpp)
    cfg = config_for_budget("hnerv", H, W, N, bpp=bpp, routes=routes)
    budget = bpp * N * H * W / 8
    assert _written_bytes(cfg, routes) <= budget
    assert cfg.fc_dim < alone.fc_dim  # the routes' bytes came out of the INR's
    wider = make_config("hnerv", **{**cfg.__dict__, "fc_dim": cfg.fc_dim + 1})
    assert stored_bits(wider) / 8 + container_bytes(wider, routes) > budget  # the widest that fits
    reserve = 4096
    reserved = config_for_budget("hnerv", H, W, N, bpp=bpp, routes=routes, reserve_bytes=reserve)
    assert _written_bytes(reserved, routes) <= budget - reserve


def test_a_budget_below_any_model_is_refused_in_one_line():
    with pytest.raises(ValueError, match="too small for any hnerv model.*container"):
        config_for_budget("hnerv", H, W, N, bpp=0.01)
    assert config_for_budget("hnerv", H, W, N, params=10**6).fc_dim >= 16  # a values budget counts values only


@pytest.mark.parametrize("embed_dim", [1, 2, 4])
def test_narrow_embeddings_are_projected_not_pinned_by_their_norm(embed_dim):
    """A LayerNorm over 2 channels outputs +-1 whatever the frame: a narrow embedding comes from a normalised
    wider stage through a projection, so it varies in magnitude with the frame."""
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    cfg = make_config("hnerv", height=32, width=48, num_frames=4, fc_dim=8, embed_dim=embed_dim)
    encoder = HNeRVEncoder(cfg)
    with torch.no_grad():
        out = encoder(torch.rand(4, 3, 32, 48))
    assert out.shape == (4, embed_dim, *cfg.grid)
    magnitudes = out.abs().flatten()
    assert magnitudes.std() > 0.05 * magnitudes.mean()
    assert isinstance(encoder.net[-1], torch.nn.Conv2d)  # the projection, after the normalised stage
