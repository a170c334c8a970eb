"""Linear CKA with the minibatch unbiased HSIC estimator; the CKA matrix, ranking and outputs."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from inr_standin import TinyINR
from nvp_export.backbone import Backbone, Preprocess
from nvp_export.route.cka import (
    CKAConfig,
    CKAMatrix,
    MinibatchCKA,
    cka_matrix,
    linear_cka,
    pooled,
    positions,
    sample_indices,
    unbiased_hsic,
)


def hsic1_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Nguyen et al. 2021 eq. 3, written out literally in float64."""
    n = x.shape[0]
    k = x @ x.T
    l = y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones((n, 1))
    term1 = np.trace(k @ l)
    term2 = (one.T @ k @ one).item() * (one.T @ l @ one).item() / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one.T @ k @ l @ one).item()
    return (term1 + term2 - term3) / (n * (n - 3))


def cka_direct(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    xy = xx = yy = 0.0
    for s in range(0, x.shape[0] - batch + 1, batch):
        xb, yb = x[s : s + batch], y[s : s + batch]
        xy += hsic1_direct(xb, yb)
        xx += hsic1_direct(xb, xb)
        yy += hsic1_direct(yb, yb)
    return xy / math.sqrt(xx * yy)


def biased_minibatch_cka(x, y, batch):
    h = np.eye(batch) - 1.0 / batch
    xy = xx = yy = 0.0
    for s in range(0, x.shape[0], batch):
        k, l = x[s : s + batch] @ x[s : s + batch].T, y[s : s + batch] @ y[s : s + batch].T
        xy += np.trace(k @ h @ l @ h)
        xx += np.trace(k @ h @ k @ h)
        yy += np.trace(l @ h @ l @ h)
    return xy / math.sqrt(xx * yy)


def _correlated(n, p, q, rng, noise=1.0):
    z = rng.standard_normal((n, 6))
    x = z @ rng.standard_normal((6, p)) + noise * rng.standard_normal((n, p))
    y = np.tanh(z @ rng.standard_normal((6, q))) + noise * rng.standard_normal((n, q))
    return x, y


def test_unbiased_hsic_matches_direct_formula(rng):
    x, y = _correlated(12, 30, 7, rng)
    k, l = torch.from_numpy(x @ x.T), torch.from_numpy(y @ y.T)
    assert float(unbiased_hsic(k, l)) == pytest.approx(hsic1_direct(x, y), rel=1e-10)
    with pytest.raises(ValueError, match="at least 4"):
        unbiased_hsic(k[:3, :3], l[:3, :3])


@pytest.mark.parametrize("batch", [4, 8, 32])
def test_minibatch_cka_matches_direct(batch, rng):
    x, y = _correlated(64, 50, 20, rng)
    ours = linear_cka(torch.from_numpy(x), torch.from_numpy(y), batch_size=batch)
    assert ours == pytest.approx(cka_direct(x, y, batch), rel=1e-9, abs=1e-12)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling(rng):
    x, y = _correlated(48, 16, 12, rng)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    base = linear_cka(torch.from_numpy(x), torch.from_numpy(y), batch_size=16)
    moved = linear_cka(torch.from_numpy(3.7 * x @ q), torch.from_numpy(0.02 * y), batch_size=16)
    assert moved == pytest.approx(base, rel=1e-9)
    assert 0.05 < base < 0.99  # a real, non-degenerate value


def test_self_similarity_is_one_and_independent_is_near_zero():
    rng = np.random.default_rng(5)  # fixed: the near-zero bound is statistical
    x = torch.from_numpy(rng.standard_normal((256, 40)))
    assert linear_cka(x, x, batch_size=8) == pytest.approx(1.0, abs=1e-12)
    noise = rng.standard_normal((256, 40))
    # Independent features: the unbiased estimator stays near 0 with batches of 8,
    # while averaging the biased (centred-Gram) estimator over the same batches gives ~0.8.
    assert abs(linear_cka(x, torch.from_numpy(noise), batch_size=8)) < 0.1
    assert biased_minibatch_cka(x.numpy(), noise, 8) > 0.5


def test_unbiased_agrees_with_full_batch_kornblith_cka_at_large_n():
    x, y = _correlated(3000, 8, 5, np.random.default_rng(6), noise=2.0)  # fixed: statistical bound
    xc, yc = x - x.mean(0), y - y.mean(0)
    kornblith = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y), batch_size=500) == pytest.approx(kornblith, abs=0.02)


def test_pooling_keeps_small_maps_and_flattens():
    f = torch.randn(3, 4, 40, 10)
    p = pooled(f, grid=8)
    assert p.shape == (3, 4 * 8 * 8) and p.dtype == torch.float64
    small = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(pooled(small, grid=8), small.reshape(2, -1).double())
    assert pooled(torch.randn(2, 3, 4, 20, 20), grid=5).shape == (2, 3 * 4 * 5 * 5)


def test_positions_put_every_map_on_one_grid():
    big, small = torch.randn(2, 3, 16, 24), torch.randn(2, 5, 2, 3)
    pb, ps = positions(big, 4), positions(small, 4)
    assert pb.shape == (2 * 16, 3) and ps.shape == (2 * 16, 5)
    # Row i is frame i // 16, position i % 16 of the 4x4 grid, channels as features.
    pooled_big = torch.nn.functional.adaptive_avg_pool2d(big, 4)
    torch.testing.assert_close(pb[16 + 5], pooled_big[1, :, 1, 1].double())
    assert positions(torch.randn(2, 3, 4, 8, 8), 4).shape == (2 * 4 * 16, 3)  # video: T folded into samples
    with pytest.raises(ValueError, match="samples must be"):
        CKAConfig(samples="pixels")


def _tiny_backbone():
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        return Backbone.from_sequential("tiny", seq, points=["1", "3"], preprocess=Preprocess((32, 32)))


@pytest.mark.parametrize("samples,flatten", [("frames", pooled), ("positions", positions)])
def test_cka_matrix_uses_the_estimator_on_sampled_minibatches(samples, flatten):
    frames = torch.rand(12, 3, 32, 32)
    inr = TinyINR(12, size=(32, 32))
    backbone = _tiny_backbone()
    m = cka_matrix(inr, backbone, frames, CKAConfig(frames=12, batch_size=6, grid=4, samples=samples))
    assert m.taps == inr.tap_names and m.points == ["1", "3"]
    assert m.values.shape == (4, 2) and np.isfinite(m.values).all()
    assert m.meta["batches"] == 2 and m.meta["samples"] == samples
    idx = sample_indices(12, 12, 0)
    assert sorted(idx.tolist()) == list(range(12))
    with torch.no_grad():
        acc = MinibatchCKA(m.taps, m.points)
        for sel in idx.split(6):
            t = inr.decode(sel)
            b = backbone.features(backbone.preprocess(frames[sel]), ["1", "3"])
            acc.update({k: flatten(v, 4) for k, v in t.items()}, {k: flatten(v, 4) for k, v in b.items()})
    np.testing.assert_allclose(m.values, acc.values(), rtol=1e-12)


def test_cka_matrix_ranking_and_outputs(tmp_path):
    inr = TinyINR(12, size=(32, 32))
    m = cka_matrix(inr, _tiny_backbone(), torch.rand(12, 3, 32, 32), CKAConfig(frames=12, batch_size=6, grid=4))

    ranked = m.ranked()
    assert [v for _, _, v in ranked] == sorted(m.values.ravel().tolist(), reverse=True)
    assert len(m.top(0.1)) == 1 and len(m.top(0.3)) == math.ceil(0.3 * 8)
    tap, point, _ = ranked[2]
    assert m.rank_of(tap, point) == 3
    per_point = m.best_per_point()
    assert sorted(p for _, p, _ in per_point) == sorted(m.points)
    for t, p, v in per_point:
        assert v == m.values[:, m.points.index(p)].max() and t == m.taps[int(m.values[:, m.points.index(p)].argmax())]

    m.save_json(tmp_path / "cka.json")
    data = json.loads((tmp_path / "cka.json").read_text())
    np.testing.assert_allclose(np.array(data["cka"]), m.values)
    assert data["taps"] == m.taps and data["backbone"] == "tiny"
    m.save_heatmap(tmp_path / "cka.png", top_fraction=0.25)
    assert (tmp_path / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cka.json", "cka.png"]  # no temp files left


def test_top_fraction_validated():
    m = CKAMatrix(["a"], ["b"], np.array([[0.5]]))
    with pytest.raises(ValueError, match="top fraction"):
        m.top(0)
