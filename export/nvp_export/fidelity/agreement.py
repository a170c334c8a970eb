"""How closely a path's task output agrees with the backbone on the original frames.

The paper's pseudo-label protocol: the backbone's answers on the original frames
are the labels; a path (NVP, full INR decode, H.264) is scored by agreement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["Fidelity", "fidelity"]


@dataclass(frozen=True)
class Fidelity:
    samples: int
    top1_agreement: float | None  # share of samples whose top-1 class matches (classification)
    top5_overlap: float | None  # mean |top5 & top5_ref| / 5 (classification)
    cosine: float  # mean cosine similarity of the raw outputs (logits or embeddings)

    def to_dict(self) -> dict:
        return asdict(self)


def fidelity(outputs: torch.Tensor, reference: torch.Tensor, task: str = "classification") -> Fidelity:
    """Agreement of ``outputs`` (N, K) with ``reference`` (N, K) from the original frames."""
    if outputs.shape != reference.shape or outputs.dim() != 2:
        raise ValueError(f"outputs {tuple(outputs.shape)} and reference {tuple(reference.shape)} must be equal (N, K)")
    outputs, reference = outputs.double(), reference.double()
    cosine = float(F.cosine_similarity(outputs, reference, dim=1).mean())
    if task != "classification":
        return Fidelity(len(outputs), None, None, cosine)
    top1 = float((outputs.argmax(1) == reference.argmax(1)).double().mean())
    k = min(5, outputs.shape[1])
    mine, ref = outputs.topk(k, dim=1).indices, reference.topk(k, dim=1).indices
    overlap = (mine[:, :, None] == ref[:, None, :]).any(2).double().sum(1) / k
    return Fidelity(len(outputs), top1, float(overlap.mean()), cosine)
