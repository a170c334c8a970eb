"""Random, untrained INRs written as .nvp files: for tests where equality with the torch path, not
accuracy, is under test."""

import torch

from nvp_export.inr import from_config, make_config
from nvp_export.inr.store import quantise_inr, save_nvp


def random_inr(family: str, frames: int, height: int, width: int, seed: int):
    torch.manual_seed(seed)
    inr = from_config(make_config(family, height=height, width=width, num_frames=frames, fc_dim=16)).eval()
    if family == "hnerv":  # its embeddings start at zero: random ones make every frame differ
        with torch.no_grad():
            inr.embeddings.normal_()
    return inr


def write_video(path, inr):
    """``inr`` quantised into the .nvp at ``path``; returns the quantised INR (what a reader decodes)."""
    arrays, meta, quantised = quantise_inr(inr)
    _, height, width = quantised.tap_shapes()["rgb"]
    video = {"frames": quantised.num_frames, "height": height, "width": width}
    save_nvp(path, quantised, arrays, meta, {"video": video})
    return quantised
