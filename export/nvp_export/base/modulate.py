"""A video's own change to the base decoder: a few values per convolution, applied as parameter deltas.

Every kind turns the base's convolution (weight W of shape (O, I, k, k), bias b) into the video's own:

- ``none``: the base as it is;
- ``bias``: b + d (O values);
- ``film``: W * (1 + g), b * (1 + g) + d per output channel (2 O values), i.e. FiLM's scale and shift
  on the convolution's output, before its activation;
- ``lora``: W + A B with A (O, r), B (r, I k k), b + d (low-rank deltas, r = ``rank``);
- ``full``: W + D, b + d (a full fine-tune stored as its delta from the base).

The decoder's architecture does not change, so a video's decoder is the base's graph with other
weights bound (the runtime's model, one graph per architecture), and its taps keep their shapes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .model import BaseDecoder

KINDS = ("none", "bias", "film", "lora", "full")


class Modulation(nn.Module):
    """The stored values of one kind for every convolution of ``decoder`` (initially: no change)."""

    def __init__(self, decoder: BaseDecoder, kind: str = "film", rank: int = 2):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown modulation {kind!r}; choose one of {KINDS}")
        if not (isinstance(rank, int) and 0 < rank <= 64):
            raise ValueError(f"LoRA rank must be an integer in 1..64, got {rank!r}")
        self.kind, self.rank = kind, rank
        self.decoder = decoder
        self.convs = [name for name, m in decoder.named_modules() if isinstance(m, nn.Conv2d)]
        self.values = nn.ParameterDict()
        # Stored names are short (c<convolution's index>_<role>): a file describes every tensor by name,
        # and at 0.1 bpp each description byte is a byte less for the latents.
        for i, name in enumerate(self.convs):
            weight = decoder.get_parameter(f"{name}.weight")
            out, fan_in = int(weight.shape[0]), int(weight[0].numel())
            if kind != "none":
                self.values[f"c{i}_shift"] = nn.Parameter(torch.zeros(out))
            if kind == "film":
                self.values[f"c{i}_gain"] = nn.Parameter(torch.zeros(out))
            elif kind == "lora":
                self.values[f"c{i}_a"] = nn.Parameter(torch.zeros(out, rank))
                self.values[f"c{i}_b"] = nn.Parameter(torch.randn(rank, fan_in) * fan_in**-0.5)
            elif kind == "full":
                self.values[f"c{i}_delta"] = nn.Parameter(torch.zeros_like(weight))

    def base_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.decoder.named_parameters())

    def parameters_for_video(self) -> dict[str, torch.Tensor]:
        """The decoder's parameters with this modulation applied (differentiable in its values)."""
        params = {k: v.detach() for k, v in self.base_parameters().items()}
        for i, name in enumerate(self.convs):
            key = f"c{i}"
            w, b = params[f"{name}.weight"], params[f"{name}.bias"]
            if self.kind == "none":
                continue
            if self.kind == "film":
                gain = 1 + self.values[f"{key}_gain"]
                w, b = w * gain.view(-1, 1, 1, 1), b * gain
            elif self.kind == "lora":
                w = w + (self.values[f"{key}_a"] @ self.values[f"{key}_b"]).view_as(w)
            elif self.kind == "full":
                w = w + self.values[f"{key}_delta"]
            params[f"{name}.weight"], params[f"{name}.bias"] = w, b + self.values[f"{key}_shift"]
        return params

    def decode(self, latent: torch.Tensor, until: str = "rgb") -> dict[str, torch.Tensor]:
        """The video's decoder's taps (see ``BaseDecoder.forward``)."""
        if self.kind == "none":
            return self.decoder(latent, until)
        return functional_call(self.decoder, self.parameters_for_video(), (latent, until))

    def _roles(self) -> dict[str, list[str]]:
        """Role (shift, gain, a, b, delta) -> the value names of that role, in convolution order."""
        roles: dict[str, list[str]] = {}
        for name in self.values:
            roles.setdefault(name.split("_", 1)[1], []).append(name)
        return roles

    def stored(self) -> dict[str, torch.Tensor]:
        """What a file stores for this modulation: one flat tensor per role, every convolution's values of
        that role in turn. (One tensor each, not one per convolution: each stored tensor's description costs
        a file about 300 bytes, which at 0.1 bpp is worth more than per-convolution quantisation ranges.)"""
        return {
            role: torch.cat([self.values[n].detach().cpu().reshape(-1) for n in names])
            for role, names in self._roles().items()
        }

    def load_stored(self, values: dict[str, torch.Tensor]) -> None:
        """Set the values from a file's (roles and sizes must be exactly this kind's)."""
        roles = self._roles()
        expected = {role: sum(self.values[n].numel() for n in names) for role, names in roles.items()}
        got = {k: tuple(torch.as_tensor(v).shape) for k, v in values.items()}
        if got != {role: (size,) for role, size in expected.items()}:
            raise ValueError(f"stored {self.kind} modulation does not fit the base ({sorted(got)[:4]}...)")
        with torch.no_grad():
            for role, names in roles.items():
                flat, at = torch.as_tensor(values[role]), 0
                for n in names:
                    size = self.values[n].numel()
                    self.values[n].copy_(flat[at : at + size].view_as(self.values[n]))
                    at += size

    def count(self) -> int:
        return sum(v.numel() for v in self.values.values())
