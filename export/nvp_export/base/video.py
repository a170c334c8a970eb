"""A file encoded against the base, as the export side reads it: the INR interface (``tap_names``,
``num_frames``, ``tap_shapes``, ``decode(idx, until)``) over its decoded latents and its own decoder
(the base's with the file's modulation), so routes are trained, fine-tuned and scored on it as on
any INR."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from nvp_rt.base_decoder import read_payload
from nvp_rt.bases import known_bases
from nvp_rt.nvpfile import BASE_SECTION, NvpFile
from nvp_rt.schema import NvpFormatError

from ..backbone import to_uint8_frames
from .model import Base
from .modulate import Modulation
from .weights import load_base


class BaseVideo:
    def __init__(self, modulation: Modulation, latents: torch.Tensor, height: int, width: int):
        self.modulation = modulation.eval()
        self.latents = latents
        self.height, self.width = height, width
        self.tap_names = modulation.decoder.tap_names
        self.num_frames = len(latents)

    def tap_shapes(self) -> dict[str, tuple[int, int, int]]:
        return self.modulation.decoder.tap_shapes(self.height, self.width)

    @torch.no_grad()
    def decode(self, idx: torch.Tensor, until: str = "rgb") -> dict[str, torch.Tensor]:
        return self.modulation.decode(self.latents[idx], until)

    def render(self, frames: Iterable[int], batch: int = 8) -> np.ndarray:
        """The frames ``frames``, uint8 (N, H, W, 3), as a reader shows them."""
        idx = torch.as_tensor(list(frames), dtype=torch.long)
        return to_uint8_frames(torch.cat([self.decode(i)["rgb"].cpu() for i in idx.split(batch)]))

    def frames(self) -> np.ndarray:
        """Every frame, uint8 (N, H, W, 3)."""
        return self.render(range(self.num_frames))

    @classmethod
    def from_payload(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], head: dict[str, Any], base: Base):
        """The coded arrays with their description ``meta`` (the section's) and the manifest's ``base``
        entry ``head``, read as the runtime reads them (``nvp_rt.base_decoder.read_payload``);
        NvpFormatError (one line) where they do not fit together."""
        payload = read_payload(arrays, meta, head)
        modulation = Modulation(base.decoder, head["modulation"], head["rank"])
        if modulation.count():
            try:
                modulation.load_stored({k: torch.from_numpy(v) for k, v in payload.modulation.items()})
            except ValueError as e:
                raise NvpFormatError(f"base payload: {e}") from None
        device = next(base.parameters()).device
        return cls(modulation.to(device), torch.from_numpy(payload.latents).to(device), head["height"], head["width"])

    @classmethod
    def open(cls, path: str | os.PathLike, base: tuple[Base, str] | None = None) -> BaseVideo:
        """A .nvp file encoded against a base: ``base`` (model, hash), or the weights of the base the file
        names among those this reader knows (``nvp_rt.bases``). A file naming another base, damaged or
        malformed: NvpFormatError, one line."""
        with NvpFile.open(path, bases=None if base is None else {base[1]}) as nvp:
            if nvp.base is None:
                raise NvpFormatError(f"{path}: not encoded against a base (its own INRs: nvp view decodes it)")
            model, digest = base if base is not None else load_base(known_bases()[nvp.base["sha256"]])
            if digest != nvp.base["sha256"] or model.config.to_dict() != nvp.base["config"]:
                raise NvpFormatError(f"{path}: encoded against base {nvp.base['sha256']}, not {digest}")
            try:
                return cls.from_payload(nvp.section(BASE_SECTION), nvp.section_meta(BASE_SECTION), nvp.base, model)
            except NvpFormatError as e:
                raise NvpFormatError(f"{path}: {e}") from None
