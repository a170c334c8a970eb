"""Shared routes: one route per (base, backbone), trained once on the corpus, that answers every file
encoded against that base with no training on the file (issue 23, docs/base.md "Shared routes").

Every file against a base decodes through the same decoder, so its taps carry the same kind of
features whatever the video; a route that maps them into a backbone can be learnt once. It learns
only from the base's declared corpus (``nvp_export.base.corpus``: scikit-image's photographs under
synthetic cameras), never from a video it will answer:

1. ``CorpusTaps``: corpus frames through the base as a coded file gives them: the encoder's latents
   plus uniform noise of a step drawn per frame, log-uniform over the steps real encodes use (0.05-2:
   Big Buck Bunny and bikes at 0.5 and 0.1 bpp), then the decoder's taps. It has the INR interface
   (``tap_names``, ``decode``...), so ``adapt`` ranks (tap, injection point) pairs by CKA, trains an
   adapter per point on the features and picks the pair, exactly as for one clip.
2. Distillation: the chosen adapter trained through the backbone suffix on the backbone's soft answers
   on the original frames (cross-entropy to the softmax at ``temperature``: the whole ranking, so the
   top-5 transfers, not only the top-1) beside the feature term (``finetune_for_task``).
3. The state kept is the one that agrees most (top-1 + top-5 overlap) on held-out corpus clips (other
   photographs' windows, other cameras), the figures reported with it.

The route is stored in the model store under the base's hash and the backbone's key
(``store_shared_route`` / ``load_shared_route``) as safetensors: arrays plus its description, no code.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as save_arrays

from nvp_rt.nvpfile import Route as FileRoute
from nvp_rt.nvpfile import update_routes
from nvp_rt.shared_route import FORMAT, STORE_KIND, SUFFIX, read_entry
from nvp_rt.store import ModelStore

from ..backbone import Backbone, to_unit_frames
from ..base.corpus import CorpusConfig, corpus_frames
from ..base.model import Base
from ..fidelity.agreement import Fidelity, fidelity
from ..onnx_export import backbone_key
from .adapt import AdaptConfig, Route, adapt, to_file_route
from .adapter import finetune_for_task

__all__ = [
    "SharedRouteConfig",
    "CorpusTaps",
    "SharedRoute",
    "train_shared_route",
    "finetune_on_clip",
    "shared_route_for",
    "naming_file_route",
    "add_to_file",
    "store_shared_route",
    "load_shared_route",
    "shared_route_name",
]


@dataclass(frozen=True)
class SharedRouteConfig:
    train_clips: int = 48
    held_out_clips: int = 12
    frames_per_clip: int = 8
    frame_size: tuple[int, int] = (320, 180)  # width, height of the corpus frames (multiples of the base's factor)
    # Corpus seed: not the pretraining's (0) nor its held-out clips' (1000), so the route sees windows
    # and cameras the base was not trained on either.
    corpus_seed: int = 7
    min_step: float = 0.05
    max_step: float = 2.0
    distil_epochs: int = 12
    distil_lr: float = 1e-3
    temperature: float = 2.0
    # The pair with the best validation top-1 (tolerance 0), not the cheapest within 2% of it as for one
    # clip: a shared route is trained once and answers every file, so agreement is what it is chosen for.
    adapt: AdaptConfig = field(default_factory=lambda: AdaptConfig(task_epochs=0, select_tolerance=0.0, progress=False))
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.train_clips < 1 or self.held_out_clips < 1 or self.frames_per_clip < 5:
            raise ValueError("train_clips >= 1, held_out_clips >= 1 and frames_per_clip >= 5 are required")
        if not 0 < self.min_step <= self.max_step:
            raise ValueError(f"need 0 < min_step <= max_step; got {self.min_step}, {self.max_step}")
        if self.distil_epochs < 0 or self.temperature <= 0:
            raise ValueError("distil_epochs >= 0 and temperature > 0 are required")

    def describe(self) -> dict[str, Any]:
        """What a stored route says of how it was trained (plain JSON)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("adapt", "progress")}
        out["adapt"] = {k: v for k, v in asdict(self.adapt).items() if isinstance(v, (int, float, str, type(None)))}
        return out


class CorpusTaps:
    """Corpus frames seen through the base as a coded file gives them (the INR interface ``adapt`` reads).

    Each frame's latent gets one fixed draw of noise (its step log-uniform in [min_step, max_step]),
    so every decode of a frame gives the same features (the CKA and the cached features agree)."""

    def __init__(self, base: Base, frames: np.ndarray, cfg: SharedRouteConfig, seed: int, batch: int = 8):
        self.decoder = base.decoder.eval()
        self.tap_names = self.decoder.tap_names
        self.num_frames, h, w = len(frames), frames.shape[1], frames.shape[2]
        self._shapes = self.decoder.tap_shapes(h, w)
        generator = torch.Generator().manual_seed(seed)
        x = to_unit_frames(frames)
        with torch.no_grad():
            latents = torch.cat([base.encoder.eval()(x[s : s + batch]) for s in range(0, len(x), batch)])
        steps = torch.exp(
            math.log(cfg.min_step)
            + torch.rand(len(x), generator=generator) * (math.log(cfg.max_step) - math.log(cfg.min_step))
        )
        noise = torch.rand(latents.shape, generator=generator) - 0.5
        self.steps = steps
        self.latents = latents + noise * steps.view(-1, 1, 1, 1)

    def tap_shapes(self) -> dict[str, tuple[int, int, int]]:
        return dict(self._shapes)

    @torch.no_grad()
    def decode(self, idx: torch.Tensor, until: str = "rgb") -> dict[str, torch.Tensor]:
        taps = self.decoder(self.latents[idx], until=until)
        if until == "rgb":
            taps["rgb"] = taps["rgb"].clamp(0, 1)
        return taps


@dataclass
class SharedRoute:
    route: Route  # as a file's route: tap, point, adapter arrays; metrics on held-out corpus clips
    base_sha256: str
    backbone_key: str
    config: dict[str, Any]  # SharedRouteConfig.describe()
    held_out: Fidelity  # the stored route on held-out corpus clips
    held_out_pixels: Fidelity  # the base's full decode -> backbone on the same clips
    seconds: float

    def summary(self) -> str:
        r, h, p = self.route, self.held_out, self.held_out_pixels
        return (
            f"shared route {r.backbone}: {r.inr_tap} -> {r.injection_point}, held-out corpus clips "
            f"top-1 {h.top1_agreement:.1%} top-5 {h.top5_overlap:.1%} (base's full decode: top-1 "
            f"{p.top1_agreement:.1%} top-5 {p.top5_overlap:.1%}), trained in {self.seconds:.0f} s"
        )


def shared_route_name(base_sha256: str, backbone_key_: str) -> str:
    return f"{base_sha256[:16]}.{backbone_key_}"


@torch.no_grad()
def _outputs(fn, n: int, batch: int = 8) -> torch.Tensor:
    return torch.cat([fn(torch.arange(s, min(s + batch, n))) for s in range(0, n, batch)])


def train_shared_route(
    base: Base, digest: str, backbone: Backbone, cfg: SharedRouteConfig = SharedRouteConfig()
) -> SharedRoute:
    """The route of ``backbone`` for files against ``base`` (hash ``digest``), learnt on the corpus only."""
    started = time.perf_counter()
    width, height = cfg.frame_size
    corpus = CorpusConfig(seed=cfg.corpus_seed, frames=cfg.frames_per_clip, width=width, height=height)
    train_frames = corpus_frames(range(cfg.train_clips), corpus)
    held_frames = corpus_frames(range(cfg.train_clips, cfg.train_clips + cfg.held_out_clips), corpus)
    train = CorpusTaps(base, train_frames, cfg, cfg.seed)
    held = CorpusTaps(base, held_frames, cfg, cfg.seed + 1)
    result = adapt(train, train_frames, backbone, replace(cfg.adapt, task_epochs=0, progress=cfg.progress))
    route = result.route
    adapter = route.build_adapter()

    def prepare(frames: np.ndarray) -> torch.Tensor:
        x = to_unit_frames(frames)
        return backbone.preprocess(x)

    held_pixels_in = prepare(held_frames)
    reference = _outputs(lambda i: backbone(held_pixels_in[i]), len(held_frames))
    held_taps = _outputs(lambda i: held.decode(i, until=route.inr_tap)[route.inr_tap], len(held_frames))

    def held_out_fidelity(a) -> Fidelity:
        with torch.no_grad():
            out = _outputs(lambda i: backbone.suffix(a(held_taps[i]), route.injection_point), len(held_frames))
        return fidelity(out, reference, backbone.task)

    def score(a) -> float:
        f = held_out_fidelity(a.stored())
        return (f.top1_agreement or 0.0) + (f.top5_overlap or 0.0)

    before_distillation = held_out_fidelity(adapter.stored())

    if backbone.task == "classification" and cfg.distil_epochs:
        train_in = prepare(train_frames)
        logits = _outputs(lambda i: backbone(train_in[i]), len(train_frames))
        soft = torch.softmax(logits / cfg.temperature, dim=1)
        target = _outputs(lambda i: backbone.prefix(train_in[i], route.injection_point), len(train_frames))
        del train_in
        taps = _outputs(lambda i: train.decode(i, until=route.inr_tap)[route.inr_tap], len(train_frames))
        before = (before_distillation.top1_agreement or 0.0) + (before_distillation.top5_overlap or 0.0)
        tuned = route.build_adapter()
        finetune_for_task(
            tuned,
            taps,
            target,
            soft,
            lambda f: backbone.suffix(f, route.injection_point) / cfg.temperature,
            epochs=cfg.distil_epochs,
            lr=cfg.distil_lr,
            seed=cfg.seed,
            select=score,
            select_every=1,
        )
        if score(tuned) > before:
            adapter = tuned
    adapter.round_to_storage()
    held_out = held_out_fidelity(adapter)
    last = train.tap_names[-1]
    pixels = _outputs(lambda i: backbone(backbone.preprocess(held.decode(i)[last])), len(held_frames))
    held_out_pixels = fidelity(pixels, reference, backbone.task)
    metrics = {
        **{k: v for k, v in route.metrics.items() if k not in ("top1_agreement", "top5_overlap", "cosine")},
        "trained_on": "corpus",
        "held_out_top1_before_distillation": before_distillation.top1_agreement,
        "held_out_top5_before_distillation": before_distillation.top5_overlap,
        "held_out_top1_agreement": held_out.top1_agreement,
        "held_out_top5_overlap": held_out.top5_overlap,
        "held_out_pixel_top1_agreement": held_out_pixels.top1_agreement,
        "held_out_pixel_top5_overlap": held_out_pixels.top5_overlap,
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    shared = replace(route, adapter=adapter.to_arrays(), metrics=metrics)
    return SharedRoute(
        shared,
        digest,
        backbone_key(backbone),
        cfg.describe(),
        held_out,
        held_out_pixels,
        time.perf_counter() - started,
    )


def finetune_on_clip(
    route: Route,
    video,
    frames: np.ndarray,
    backbone: Backbone,
    epochs: int = 10,
    lr: float = SharedRouteConfig.distil_lr,
    temperature: float = SharedRouteConfig.temperature,
    seed: int = 0,
) -> Route:
    """The shared ``route`` fine-tuned on one clip (``video``: its file with the INR interface, ``frames``: the
    original frames it encodes): distilled on the backbone's answers on those frames, as on the corpus.
    The result is trained on the clip it will answer, and says so (``metrics["trained_on"]``)."""
    x = backbone.preprocess(to_unit_frames(frames))
    n = len(frames)
    logits = _outputs(lambda i: backbone(x[i]), n)
    target = _outputs(lambda i: backbone.prefix(x[i], route.injection_point), n)
    taps = _outputs(lambda i: video.decode(i, until=route.inr_tap)[route.inr_tap], n)
    adapter = route.build_adapter()
    finetune_for_task(
        adapter,
        taps,
        target,
        torch.softmax(logits / temperature, dim=1),
        lambda f: backbone.suffix(f, route.injection_point) / temperature,
        epochs=epochs,
        lr=lr,
        seed=seed,
    )
    adapter.round_to_storage()
    metrics = {**route.metrics, "trained_on": "this clip", "finetune_epochs": epochs}
    return replace(route, adapter=adapter.to_arrays(), metrics=metrics)


def shared_route_for(
    base: Base, digest: str, backbone: Backbone, store: ModelStore, cfg: SharedRouteConfig = SharedRouteConfig()
) -> tuple[Route, bool]:
    """The shared route of ``backbone`` for ``base`` from ``store``, trained (on the corpus) and stored first
    when the store has none; the bool says whether it was trained now."""
    route = load_shared_route(store, digest, backbone)
    if route is not None:
        return route, False
    shared = train_shared_route(base, digest, backbone, cfg)
    store_shared_route(shared, store)
    return shared.route, True


def naming_file_route(route: Route, name: str) -> FileRoute:
    """A file's entry for the shared route ``name`` (``route``): it names the route and carries no adapter
    (``nvp_rt.shared_route`` resolves it from the model store), so adding the task costs the file a few
    hundred bytes of manifest."""
    entry = to_file_route(route)
    return replace(entry, arrays={}, metadata={**entry.metadata, "shared_route": name})


def add_to_file(
    path: str | os.PathLike,
    base: Base,
    digest: str,
    backbone: Backbone,
    store: ModelStore,
    task: str,
    finetune: tuple[np.ndarray, int] | None = None,
    payload_checksum: int | None = None,
) -> tuple[Route, bool, int]:
    """Route ``task`` of the file against ``base`` at ``path`` into ``backbone``: the shared route, named by
    the file (trained on the corpus first when ``store`` has none), or with ``finetune`` = (the clip's
    original frames, epochs) that route distilled on this clip and carried in the file. Every graph a
    query needs goes into ``store``. Returns the route, whether the shared route was trained now, and the
    file's new size."""
    from ..base.video import BaseVideo
    from ..onnx_export import export_adapter_tail, export_backbone_graphs, export_base_graphs

    route, trained = shared_route_for(base, digest, backbone, store)
    if finetune is not None:
        route = finetune_on_clip(route, BaseVideo.open(path, (base, digest)), finetune[0], backbone, finetune[1])
    route = replace(route, task=task)
    key = export_backbone_graphs(backbone, [route.injection_point], store)
    name = shared_route_name(digest, key)
    if finetune is not None:  # this clip's own adapter: in the file, its bytes counted in the file's size
        entry = to_file_route(route)
        entry = replace(entry, backbone=key, metadata={**entry.metadata, "finetuned_from": name})
    else:
        entry = replace(naming_file_route(route, name), backbone=key)
    if route.hidden is not None:
        export_adapter_tail(store)
    export_base_graphs(base.decoder, digest, store)  # the file's prefix, for a store that lacks it
    size = update_routes(path, lambda routes: [r for r in routes if r.task != task] + [entry], payload_checksum)
    return route, trained, size


def store_shared_route(shared: SharedRoute, store: ModelStore) -> str:
    """Put the route in ``store`` (safetensors: the adapter's arrays, its description as metadata)."""
    r = shared.route
    description = {
        "format": FORMAT,
        "base_sha256": shared.base_sha256,
        "backbone_key": shared.backbone_key,
        "task": r.task,
        "backbone": r.backbone,
        "inr_tap": r.inr_tap,
        "injection_point": r.injection_point,
        "in_channels": r.in_channels,
        "out_channels": r.out_channels,
        "size": list(r.size),
        "hidden": r.hidden,
        "metrics": r.metrics,
        "config": shared.config,
        "seconds": shared.seconds,
    }
    data = save_arrays(
        {k: np.ascontiguousarray(v, np.float32) for k, v in r.adapter.items()},
        {"description": json.dumps(description)},
    )
    name = shared_route_name(shared.base_sha256, shared.backbone_key)
    store.put(STORE_KIND, name, data, suffix=SUFFIX)
    return name


def load_shared_route(store: ModelStore, base_sha256: str, backbone: Backbone) -> Route | None:
    """The shared route of ``backbone`` for ``base_sha256`` in ``store``, or None; a damaged entry is a
    ValueError (one line)."""
    path = store.path(STORE_KIND, shared_route_name(base_sha256, backbone_key(backbone)), SUFFIX)
    if not path.is_file():
        return None
    try:
        description, arrays = read_entry(path)
        if description.get("base_sha256") != base_sha256:
            raise ValueError("not a shared route of this base")
        route = Route(
            str(description["task"]),
            str(description["backbone"]),
            str(description["inr_tap"]),
            str(description["injection_point"]),
            int(description["in_channels"]),
            int(description["out_channels"]),
            tuple(int(s) for s in description["size"]),
            None if description["hidden"] is None else int(description["hidden"]),
            arrays,
            dict(description["metrics"]),
        )
        route.build_adapter()  # the arrays fit the description
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"shared route {path}: damaged ({str(e).splitlines()[0][:120]})") from None
    return route
