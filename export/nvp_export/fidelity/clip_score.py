"""CLIP-score of captions against the frames they describe (Hessel et al., 2021, without the 2.5 weight).

``100 * max(cos(image embedding, text embedding), 0)`` with a CLIP model the user has
locally (a ``save_pretrained`` directory of e.g. openai/clip-vit-base-patch32, model and
tokenizer). Captioning fidelity reports it for the NVP path's captions and for the
captions of the original frames, both scored against the original frames, so the gap
says how much caption quality the NVP path costs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel

from ..weights import WeightsError

__all__ = ["ClipScorer"]


def _pooled(output) -> torch.Tensor:
    """transformers < 5 returns the projected embedding, 5 an output whose pooler_output holds it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    """Scores (image, caption) pairs with one CLIP model."""

    def __init__(self, model: CLIPModel, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        config: Any = model.config  # transformers types its sub-configs as unions with dict and None
        self.image_size = int(config.vision_config.image_size)
        self.max_tokens = int(config.text_config.max_position_embeddings)
        processor_stats = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        self.mean, self.std = (torch.tensor(s).view(1, 3, 1, 1) for s in processor_stats)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ClipScorer:
        """A CLIP model and its tokenizer from a local ``save_pretrained`` directory (nothing is downloaded)."""
        path = Path(directory)
        if not path.is_dir():
            raise WeightsError(f"CLIP weights must be a save_pretrained directory; got {path}")
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot load CLIP from {path}: {e}".splitlines()[0]) from None
        return cls(model, tokenizer)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> CLIP's input: shorter side to the model's size (bicubic), centre crop,
        normalise."""
        h, w = images.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size].clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """CLIP-score of each image with its caption, shape (N,)."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        image = _pooled(self.model.get_image_features(pixel_values=self.preprocess(images)))
        tokens = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        text = _pooled(self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask))
        return 100 * F.cosine_similarity(image, text, dim=-1).clamp_min(0)
