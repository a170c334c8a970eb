"""One pretrained base for every video (docs/base.md).

``corpus`` (the declared training data: scikit-image's photographs filmed by synthetic cameras),
``model`` (the base: HNeRV-family encoder + decoder with named taps), ``weights`` (its safetensors file
and hash; the package ships one), ``pretrain`` (the command that trains it), ``modulate`` (a video's own
change to the decoder), ``latents`` (the per-frame latents' coding), ``encode`` (a clip against the
base: latents and modulation fitted, coded, counted in bytes, decoded back).
"""

from .model import Base, BaseConfig, BaseDecoder, BaseEncoder, weights_hash
from .weights import SHIPPED, BaseWeightsError, load_base, save_base

__all__ = [
    "Base",
    "BaseConfig",
    "BaseDecoder",
    "BaseEncoder",
    "weights_hash",
    "SHIPPED",
    "BaseWeightsError",
    "load_base",
    "save_base",
]
