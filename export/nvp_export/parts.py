"""Checkpoints of a segmented encode: finished segments kept beside the output, so an interrupted encode resumes.

    OUT.nvp.parts/plan.json        what the parts were made from: the source's identity and every setting that
                                   changes the result (``settings``), and the segment plan
    OUT.nvp.parts/seg-00003.nvp    segment 3: an ordinary single-segment .nvp (written atomically), whose
                                   manifest's ``encoding.segment`` names its frames and the settings' digest

Running the same command again keeps every part that passes :meth:`Parts.finished` (the file opens with every
checksum holding, and it is the segment the plan asks for, made with these settings, of this architecture)
and fits the rest. Parts made with other settings are never mixed in: the command is refused, naming the
first difference, unless ``--overwrite`` starts over. The folder is removed once the output is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nvp_rt.atomic import atomic_write
from nvp_rt.nvpfile import NvpFile, NvpFormatError
from nvp_rt.video import FrameSelection

from .encode import EncodeConfig, budget_of
from .segments import Segment

PLAN = "plan.json"
HASHED_BYTES = 1 << 20  # the source's first and last MiB identify it, with its size, without reading it all


class ResumeRefused(ValueError):
    """Parts of an earlier encode exist beside the output, made from another source or with other settings."""


def source_identity(path: str | os.PathLike) -> str:
    """The source's size and a hash of its first and last MiB: another file (or the file changed) differs."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HASHED_BYTES))
        f.seek(max(size - HASHED_BYTES, 0))
        digest.update(f.read(HASHED_BYTES))
    return f"{size} bytes, sha256 {digest.hexdigest()[:16]}"


def _range(selection: FrameSelection) -> str:
    return f"{selection.start}:{'' if selection.stop is None else selection.stop}:{selection.step}"


def _size(wh: tuple[int, int] | None) -> str:
    return "none" if wh is None else f"{wh[0]}x{wh[1]}"


def encode_settings(source: str | os.PathLike, selection: FrameSelection, cfg: EncodeConfig) -> dict[str, str]:
    """Everything that changes the encoded result, named as the command line names it, as text (stored in
    ``plan.json``; the device, threads, progress bars and compilation are left out: they do not change what is
    fitted)."""
    budget = budget_of(cfg)
    fit = asdict(cfg.fit)
    settings = {
        "source": source_identity(source),
        "--frames": _range(selection),
        "--crop": _size(selection.crop),
        "--size": _size(selection.size),
        "--family": cfg.family,
        "--bpp": str(budget.get("bpp", "none")),
        "--params": str(budget.get("params", "none")),
        "--segment-frames": str(cfg.segment_frames),
        "--cuts": cfg.cuts,
        "--warm-start": str(cfg.warm_start),
        "--for": ",".join(f"{k}={v}" for k, v in cfg.tasks.items()) or "none",
        "--epochs": str(fit.pop("epochs")),
        "--time-limit": str(fit.pop("time_limit_s")),
        "--lr": str(fit.pop("lr")),
        "--batch": str(fit.pop("batch")),
        "--target-psnr": str(fit.pop("target_psnr")),
        "--seed": str(fit.pop("seed")),
    }
    for name in ("device", "threads", "progress", "compile"):
        fit.pop(name)
    settings.update({f"fit.{k}": str(v) for k, v in fit.items()})
    if cfg.tasks:
        settings.update({f"task_aware.{k}": str(v) for k, v in asdict(cfg.task_aware).items()})
    return settings


def settings_digest(settings: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def first_difference(now: dict[str, str], before: dict[str, Any]) -> str | None:
    """'--bpp 0.5 vs 0.25 in the existing parts', or None when the settings are the same."""
    for key in [*now, *(k for k in before if k not in now)]:
        if now.get(key) != before.get(key):
            return f"{key} {now.get(key, 'unset')} vs {before.get(key, 'unset')} in the existing parts"
    return None


class Parts:
    """The parts folder of one output."""

    def __init__(self, output: str | os.PathLike):
        self.folder = Path(output).with_name(Path(output).name + ".parts")

    def path(self, k: int) -> Path:
        return self.folder / f"seg-{k:05d}.nvp"

    def prepare(self, settings: dict[str, str], segments: list[Segment], overwrite: bool = False) -> None:
        """Make the folder ready: kept as it is for a resume with the same settings, emptied with ``overwrite``,
        refused (ResumeRefused, one line naming the first difference) otherwise."""
        if overwrite:
            self.remove()
        elif self.folder.is_dir():
            before = self._plan()
            difference = before is not None and first_difference(settings, before.get("settings", {}))
            if difference:
                raise ResumeRefused(
                    f"{self.folder} holds segments of another encode ({difference}); run the command that "
                    f"made them, or pass --overwrite to start over"
                )
        elif self.folder.exists():
            raise ResumeRefused(f"{self.folder} exists and is not a folder of parts; move it away")
        self.folder.mkdir(exist_ok=True)
        plan = {"settings": settings, "segments": [[s.start, s.count] for s in segments]}
        atomic_write(self.folder / PLAN, json.dumps(plan, indent=1).encode())

    def _plan(self) -> dict | None:
        with contextlib.suppress(OSError, ValueError):
            plan = json.loads((self.folder / PLAN).read_bytes())
            if isinstance(plan, dict) and isinstance(plan.get("settings"), dict):
                return plan
        return None  # unreadable: each part still carries its settings' digest

    def finished(self, k: int, entry: dict[str, Any], inr_config: dict) -> bool:
        """Whether part ``k`` is complete (every section's checksum holds) and is the segment ``entry`` (its
        manifest's ``encoding.segment``) of an INR of ``inr_config``; anything else (missing, truncated,
        tampered, another encode's) is redone."""
        if not self.path(k).is_file():
            return False
        try:
            with NvpFile.open(self.path(k)) as nvp:
                nvp.verify()
                manifest, segments = nvp.manifest, len(nvp.segments)
        except (OSError, NvpFormatError, ValueError):
            return False
        encoding = manifest.get("encoding")
        segment = encoding.get("segment") if isinstance(encoding, dict) else None
        return segments == 1 and segment == entry and manifest.get("inr") == inr_config

    def remove(self) -> None:
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
