"""BLIP captioning: transformers' ``BlipForConditionalGeneration`` as named stages.

Built offline from a ``BlipConfig`` (ViT-B/16 vision tower at 384, BERT text
decoder); pretrained weights load where the user has them (a local
``save_pretrained`` directory of Salesforce/blip-image-captioning-base, whose
tokenizer then turns token ids into text); otherwise it runs randomly initialised
and says so. A clip is captioned on ``CLIP_FRAMES`` = 8 frames sampled evenly
(``clip_frame_indices``), each with up to ``MAX_TOKENS`` = 20 tokens, as in the paper.

Injection points in the vision tower:
- ``patch_embed``: the patch-embedding conv's map (768 @ 24x24 at 384);
- ``layer{k}``: after encoder layer k. The token sequence is carried as two
  pathways, the class token as a 1x1 map and the patch tokens as their grid, so
  the same ``PathwayAdapter`` (resize + 1x1 conv per pathway) feeds it.
The last stage runs the remaining layers, the post-layernorm and the text
decoder's greedy generation; its output is the caption token ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, BlipConfig, BlipForConditionalGeneration

from ..backbone import MultiPathwayBackbone, Preprocess
from ..weights import WeightsError

__all__ = ["blip_config", "build", "BlipBackbone", "clip_frame_indices", "CLIP_FRAMES", "MAX_TOKENS"]

CLIP_FRAMES = 8
MAX_TOKENS = 20
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def blip_config(**overrides: Any) -> BlipConfig:
    """BLIP-base captioning; ``vision_config``/``text_config`` dict overrides shrink it for tests.

    The vision tower's random init uses std 0.02 (ViT's) instead of transformers' BLIP default of
    1e-10, which makes a randomly initialised tower ignore its input (pretrained weights replace it).
    """
    vision = {"initializer_range": 0.02, **overrides.pop("vision_config", {})}
    return BlipConfig(vision_config=vision, **overrides)


def clip_frame_indices(num_frames: int, count: int = CLIP_FRAMES) -> torch.Tensor:
    """``count`` frame indices spread evenly over a clip of ``num_frames``."""
    return torch.linspace(0, num_frames - 1, min(count, num_frames)).round().long()


def _to_tokens(x) -> torch.Tensor:
    """[class (N, C, 1, 1), grid (N, C, h, w)] -> (N, 1 + h*w, C) tokens."""
    cls, grid = x
    return torch.cat([cls.flatten(2), grid.flatten(2)], dim=2).transpose(1, 2)


def _to_pathways(tokens: torch.Tensor, grid_size: tuple[int, int]) -> list[torch.Tensor]:
    n, _, c = tokens.shape
    t = tokens.transpose(1, 2)
    return [t[:, :, :1].reshape(n, c, 1, 1), t[:, :, 1:].reshape(n, c, *grid_size)]


class _FirstLayer(nn.Module):
    """Patch grid -> class token + position embedding -> encoder layer 0 -> two pathways."""

    def __init__(self, embeddings: nn.Module, layer: nn.Module):
        super().__init__()
        self.embeddings, self.layer = embeddings, layer

    def forward(self, grid):
        e = self.embeddings
        n = grid.shape[0]
        tokens = torch.cat([e.class_embedding.expand(n, 1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        tokens = tokens + e.position_embedding[:, : tokens.shape[1]]
        return _to_pathways(self.layer(tokens), tuple(grid.shape[-2:]))


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return _to_pathways(self.layer(_to_tokens(x)), tuple(x[1].shape[-2:]))


class _Caption(nn.Module):
    """Remaining encoder layers -> post-layernorm -> greedy caption of up to ``max_tokens`` token ids."""

    def __init__(self, model: BlipForConditionalGeneration, layers: list[nn.Module], max_tokens: int):
        super().__init__()
        self.model, self.layers, self.max_tokens = model, nn.ModuleList(layers), max_tokens

    def image_embeds(self, x) -> torch.Tensor:
        tokens = _to_tokens(x)
        for layer in self.layers:
            tokens = layer(tokens)
        return self.model.vision_model.post_layernorm(tokens)

    def forward(self, x):
        return self.generate(self.image_embeds(x))

    def generate(self, embeds: torch.Tensor) -> torch.Tensor:
        """Vision-tower output (N, tokens, C) -> caption token ids (N, <= 1 + max_tokens)."""
        text = self.model.config.text_config
        start = torch.full((embeds.shape[0], 1), text.bos_token_id, dtype=torch.long, device=embeds.device)
        return self.model.text_decoder.generate(
            input_ids=start,
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
            encoder_hidden_states=embeds,
            encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device),
            max_new_tokens=self.max_tokens,
            do_sample=False,
            num_beams=1,
        )


class BlipBackbone(MultiPathwayBackbone):
    tokenizer: Any = None  # present when the weights directory ships one
    special_ids: set[int]  # start, pad and end token ids, dropped from id captions

    def vision_embeds(self, features, from_point: str) -> torch.Tensor:
        """The vision tower's output (what the text decoder reads) from the features at ``from_point``."""
        names = self._stage_names()
        for name in names[names.index(from_point) + 1 : -1]:
            features = self.stages[name](features)
        return self.stages[names[-1]].image_embeds(features)

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's output from normalised pixels: the whole tower, as the pixel path runs it."""
        first = self._stage_names()[0]
        return self.vision_embeds(self.stages[first](pixels), first)

    def text_step(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Next-token logits (N, vocab) after ``input_ids`` (N, L): one step of the greedy decoding in
        ``generate``, recomputed over the whole prefix (the runtime's loop; no cache to export)."""
        decoder = self.stages[self._stage_names()[-1]].model.text_decoder
        mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
        out = decoder(input_ids=input_ids, encoder_hidden_states=embeds, encoder_attention_mask=mask, return_dict=True)
        return out.logits[:, -1]

    def caption_settings(self) -> dict:
        """What the runtime's greedy loop and detokeniser need: the generate() settings and the vocabulary."""
        caption = self.stages[self._stage_names()[-1]]
        text = caption.model.config.text_config
        vocab, clean = None, False
        if self.tokenizer is not None:
            vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            clean = bool(self.tokenizer.clean_up_tokenization_spaces)
        return {
            "bos": text.bos_token_id,
            "eos": text.sep_token_id,
            "pad": text.pad_token_id,
            "max_tokens": caption.max_tokens,
            "special_ids": sorted(self.special_ids),
            "vocab": vocab,
            "clean_up_spaces": clean,
        }

    def postprocess(self, token_ids: torch.Tensor) -> list[str] | list[list[int]]:
        """Caption token ids -> text with the checkpoint's tokenizer, else the ids without the start/pad tokens."""
        if self.tokenizer is not None:
            return [s.strip() for s in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
        return [caption_tokens(ids, self.special_ids) for ids in token_ids]


def caption_tokens(ids: torch.Tensor, special: set[int]) -> list[int]:
    return [i for i in ids.tolist() if i not in special]


def _load(weights: str | os.PathLike):
    path = Path(weights)
    if not path.is_dir():
        raise WeightsError(f"BLIP weights must be a save_pretrained directory; got {path}")
    try:
        model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
    except Exception as e:  # a broken or foreign checkpoint directory, reported in one line
        raise WeightsError(f"cannot load BLIP from {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):  # weights without tokenizer files: captions stay token ids
        tokenizer = None
    return model, tokenizer


def build(
    weights: str | os.PathLike | None = None, config: BlipConfig | None = None, max_tokens: int = MAX_TOKENS
) -> BlipBackbone:
    model, tokenizer = (
        _load(weights) if weights is not None else (BlipForConditionalGeneration(config or blip_config()), None)
    )
    model.eval()
    vision = model.vision_model
    layers = list(vision.encoder.layers)
    if len(layers) < 2:
        raise ValueError("the BLIP vision tower needs at least two encoder layers")
    stages = [("patch_embed", vision.embeddings.patch_embedding), ("layer0", _FirstLayer(vision.embeddings, layers[0]))]
    last_point = len(layers) // 2  # later points leave too little of the tower to adapt into
    stages += [(f"layer{k}", _Layer(layers[k])) for k in range(1, last_point + 1)]
    stages.append(("caption", _Caption(model, layers[last_point + 1 :], max_tokens)))
    size = model.config.vision_config.image_size
    backbone = BlipBackbone(
        "blip",
        stages,
        Preprocess(input_size=(size, size), mean=CLIP_MEAN, std=CLIP_STD),
        task="captioning",
        pretrained=weights is not None,
        weights_source=str(weights) if weights else "pass weights=DIR of Salesforce/blip-image-captioning-base",
    )
    text = model.config.text_config
    backbone.tokenizer = tokenizer
    backbone.special_ids = {text.bos_token_id, text.pad_token_id, text.sep_token_id}
    return backbone
