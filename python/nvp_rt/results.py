"""What a query answers, per task kind, and the post-processing from raw head outputs to it.

Post-processing follows the export side's torch definitions (``Backbone.postprocess``
of each preset) operation for operation, in numpy; tests hold the two together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Classification",
    "Detection",
    "Action",
    "Segmentation",
    "Captioning",
    "postprocess",
    "bilinear_matrix",
    "detokenize",
]

TopK = list[tuple[int, str, float]]  # (class index, label, probability), best first


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top_k(logits: np.ndarray, labels: list[str], k: int) -> list[TopK]:
    probs = _softmax(logits.astype(np.float64))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(int(i), labels[i] if labels else str(int(i)), float(p[i])) for i in row] for p, row in zip(probs, order)]


def _top_k_dicts(rows: list[TopK]) -> list[list[dict]]:
    return [[{"index": i, "label": label, "prob": round(p, 6)} for i, label, p in row] for row in rows]


@dataclass
class Classification:
    """Per frame: ``logits`` (N, K) and the ``top_k`` classes."""

    frames: list[int]
    logits: np.ndarray
    top_k: list[TopK]

    def to_dict(self) -> dict:
        return {
            "kind": "classification",
            "frames": [{"frame": f, "top_k": t} for f, t in zip(self.frames, _top_k_dicts(self.top_k))],
        }


@dataclass
class Action:
    """Per clip of consecutive requested frames: ``logits`` (clips, K) and the ``top_k`` actions."""

    clips: list[list[int]]
    logits: np.ndarray
    top_k: list[TopK]

    def to_dict(self) -> dict:
        return {
            "kind": "action",
            "clips": [{"frames": c, "top_k": t} for c, t in zip(self.clips, _top_k_dicts(self.top_k))],
        }


@dataclass
class FrameDetections:
    boxes: np.ndarray  # (K, 4) x0, y0, x1, y1 in the video's pixels
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,) class ids
    names: list[str]


@dataclass
class Detection:
    """Per frame, the detections scoring above the head's threshold; raw ``logits``/``boxes`` kept too."""

    frames: list[int]
    detections: list[FrameDetections]
    logits: np.ndarray
    raw_boxes: np.ndarray  # (N, Q, 4) normalised cx, cy, w, h

    def to_dict(self) -> dict:
        return {
            "kind": "detection",
            "frames": [
                {
                    "frame": f,
                    "detections": [
                        {
                            "box": [round(float(v), 2) for v in b],
                            "score": round(float(s), 6),
                            "label": int(c),
                            "name": n,
                        }
                        for b, s, c, n in zip(d.boxes, d.scores, d.labels, d.names)
                    ],
                }
                for f, d in zip(self.frames, self.detections)
            ],
        }

    @property
    def boxes(self) -> list[np.ndarray]:
        return [d.boxes for d in self.detections]

    @property
    def scores(self) -> list[np.ndarray]:
        return [d.scores for d in self.detections]

    @property
    def labels(self) -> list[np.ndarray]:
        return [d.labels for d in self.detections]


@dataclass
class Segmentation:
    """Per frame, a class mask (N, H, W) at the video's resolution; ``logits`` at the head's resolution."""

    frames: list[int]
    masks: np.ndarray
    logits: np.ndarray = field(repr=False)
    labels: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """Masks are images: the JSON gives each frame's class areas (fraction of pixels)."""
        frames = []
        for f, mask in zip(self.frames, self.masks):
            classes, counts = np.unique(mask, return_counts=True)
            areas = {
                (self.labels[c] if c < len(self.labels) else str(c)): round(float(n) / mask.size, 6)
                for c, n in zip(classes, counts)
            }
            frames.append({"frame": f, "class_areas": areas})
        return {"kind": "segmentation", "frames": frames}


@dataclass
class Captioning:
    """Per frame, the caption's token ids (special tokens dropped) and, where the store holds the
    checkpoint's vocabulary, its text."""

    frames: list[int]
    token_ids: list[list[int]]
    texts: list[str] | None

    def to_dict(self) -> dict:
        return {
            "kind": "captioning",
            "frames": [
                {"frame": f, "token_ids": ids, **({"text": self.texts[i]} if self.texts is not None else {})}
                for i, (f, ids) in enumerate(zip(self.frames, self.token_ids))
            ],
        }


# WordPiece decoding as transformers' BERT tokenizer (BLIP's) does it with skip_special_tokens=True: the
# tokenizers library's WordPiece decoder cleans each token as it joins them; the tokenizer may then clean the
# whole string again (its clean_up_tokenization_spaces setting).
_CLEANUPS = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
]


def _clean(text: str) -> str:
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


def detokenize(ids: list[int], vocab: list[str], clean_up_spaces: bool = False) -> str:
    parts = []
    for i, token in enumerate(vocab[j] for j in ids):
        if i:
            token = token[2:] if token.startswith("##") else " " + token
        parts.append(_clean(token))
    text = "".join(parts)
    return _clean(text) if clean_up_spaces else text


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling along one axis, half-pixel centres (torch align_corners=False)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def _detections(
    logits: np.ndarray, boxes: np.ndarray, labels: list[str], threshold: float, size: tuple[int, int]
) -> list[FrameDetections]:
    probs = _softmax(logits.astype(np.float64))[..., :-1]  # the last class is "no object"
    scores, classes = probs.max(-1), probs.argmax(-1)
    h, w = size
    out = []
    for s, c, b in zip(scores, classes, boxes.astype(np.float64)):
        keep = s > threshold
        cx, cy, bw, bh = b[keep].T
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * [w, h, w, h]
        out.append(
            FrameDetections(xyxy.astype(np.float32), s[keep].astype(np.float32), c[keep], [labels[i] for i in c[keep]])
        )
    return out


def postprocess(
    task: str,
    outputs: dict[str, np.ndarray],
    description: dict[str, Any],
    frames: list,
    video_size: tuple[int, int],
    k: int = 5,
):
    """Raw head outputs of ``task`` kind -> its typed result. ``video_size`` is (H, W)."""
    labels = list(description.get("labels", []))
    if task == "classification":
        return Classification(frames, outputs["logits"], _top_k(outputs["logits"], labels, k))
    if task == "action":
        return Action(frames, outputs["logits"], _top_k(outputs["logits"], labels, k))
    if task == "detection":
        threshold = float(description.get("threshold", 0.7))
        dets = _detections(outputs["logits"], outputs["boxes"], labels, threshold, video_size)
        return Detection(frames, dets, outputs["logits"], outputs["boxes"])
    if task == "segmentation":
        logits = outputs["logits"]
        rows, cols = bilinear_matrix(logits.shape[2], video_size[0]), bilinear_matrix(logits.shape[3], video_size[1])
        up = np.einsum("yh,nkhw,xw->nkyx", rows.astype(np.float32), logits, cols.astype(np.float32), optimize=True)
        return Segmentation(frames, up.argmax(1), logits, labels)
    if task == "captioning":
        settings = description["caption"]
        special = set(settings["special_ids"])
        ids = [[int(i) for i in row if int(i) not in special] for row in outputs["token_ids"]]
        vocab = settings.get("vocab")
        clean = bool(settings.get("clean_up_spaces"))
        return Captioning(frames, ids, [detokenize(row, vocab, clean) for row in ids] if vocab else None)
    raise ValueError(f"no post-processing for task kind {task!r}")
