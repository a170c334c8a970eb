"""A clip encoded against the shipped base, as a .nvp file: its size is the rate the encoder reports, it
opens and verifies, decodes to the encoder's own frames, names its base (``nvp info``), and a reader
without that base, or a truncated or damaged file, is refused in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from nvp_export.base import SHIPPED, load_base  # noqa: E402
from nvp_export.base.encode import BaseEncodeConfig, encode, read, write  # noqa: E402
from nvp_rt import nvpfile  # noqa: E402
from nvp_rt.nvpfile import BASE_SECTION, NvpFile, base_nvp_bytes  # noqa: E402
from nvp_rt.schema import NvpFormatError  # noqa: E402


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, one_torch_thread):
    """A fresh random clip (smooth colours moving, so the latents code to something) against the shipped base."""
    rng = np.random.default_rng()
    n = 6  # frames of 60x80: a 6x8 grid of random colours, each 10x10 pixels, drifting over time
    coarse = rng.uniform(0, 255, (n + 3, 6, 8, 3))
    frames = np.stack([np.kron(coarse[i : i + 4].mean(0), np.ones((10, 10, 1))) for i in range(n)]).astype(np.uint8)
    base, digest = load_base()
    cfg = BaseEncodeConfig(bpp=1.5, fit_seconds=0.5, max_steps=4)
    result = encode(frames, base, digest, cfg, video={"fps": 25.0, "source": "random"})
    path = tmp_path_factory.mktemp("base") / "clip.nvp"
    return path, result, frames, cfg, digest, write(path, result)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "nvp_rt.cli", *args], capture_output=True, text=True, env=env)


def test_file_size_is_the_reported_rate_and_it_decodes_to_the_encoders_frames(encoded):
    path, result, frames, cfg, digest, written = encoded
    n, h, w, _ = frames.shape
    size = path.stat().st_size
    assert size == written == len(result.data) <= cfg.bpp * n * h * w / 8
    assert result.bpp == 8 * size / (n * h * w)
    with NvpFile.open(path) as nvp:  # the shipped base is among those the runtime knows
        nvp.verify()
        assert nvp.version == nvpfile.FORMAT_VERSION == (2, 1)
        assert nvp.base is not None and nvp.base["sha256"] == digest and nvp.segments == [nvpfile.Segment(0, n)]
        assert [t["name"] for t in nvp.manifest["taps"]] == ["stem", "block1", "block2", "rgb"]
    decoded = read(path)  # the base found by the hash the file names
    np.testing.assert_array_equal(decoded, result.frames)
    mse = ((decoded.astype(np.float64) - frames) ** 2).reshape(n, -1).mean(1)
    assert abs(float(np.mean(10 * np.log10(255.0**2 / mse))) - result.psnr) < 1e-6
    info = _cli("info", str(path))
    assert info.returncode == 0 and f"base        {digest}" in info.stdout
    assert f"{size} bytes, {result.bpp:.4f} bpp" in info.stdout


def _rebuilt(path, change):
    """The file rebuilt (valid checksums) with ``change`` applied to its manifest: a crafted file."""
    with NvpFile.open(path) as nvp:
        manifest = {k: v for k, v in nvp.manifest.items() if k != "segments"}
        arrays, meta = nvp.section(BASE_SECTION), nvp.section_meta(BASE_SECTION)
    change(manifest)
    return base_nvp_bytes(manifest, arrays, meta)


def test_a_reader_without_the_base_refuses_the_file_in_one_line(encoded, tmp_path):
    path, *_ = encoded
    other = f"{int(np.random.default_rng().integers(1 << 62)):064x}"
    crafted = tmp_path / "other.nvp"
    crafted.write_bytes(_rebuilt(path, lambda m: m["base"].update(sha256=other)))
    with pytest.raises(NvpFormatError, match=f"encoded against base {other}, which this reader does not have"):
        NvpFile.open(crafted)
    with pytest.raises(NvpFormatError, match=other):
        read(crafted)
    info = _cli("info", str(crafted))
    assert info.returncode == 1 and info.stdout == ""
    assert len(info.stderr.strip().splitlines()) == 1 and other in info.stderr


def test_malformed_truncated_or_damaged_files_are_refused(encoded, tmp_path):
    path, result, *_ = encoded
    data = path.read_bytes()
    bad = tmp_path / "bad.nvp"
    for cut in (len(data) - 1, len(data) // 2, 40):
        bad.write_bytes(data[:cut])
        with pytest.raises(NvpFormatError):
            read(bad)
    flipped = bytearray(data)
    flipped[-5] ^= 0x10  # inside the payload: its section's crc32 catches it
    bad.write_bytes(bytes(flipped))
    with pytest.raises(NvpFormatError, match="checksum mismatch"):
        read(bad)
    for change, field in (
        (lambda m: m["base"].update(sha256="ABC"), "manifest.base.sha256"),
        (lambda m: m["base"].update(modulation="cubic"), "manifest.base.modulation"),
        (lambda m: m["base"].update(num_frames=7), "manifest.video.frames"),
        (lambda m: m["base"]["config"].update(strides=[5, 3]), "manifest.base.config.strides"),
        (lambda m: m["taps"][1].update(shape=[32, 6, 8]), r"manifest.taps\[1\].shape"),
    ):
        bad.write_bytes(_rebuilt(path, change))
        with pytest.raises(NvpFormatError, match=field):
            NvpFile.open(bad)
    # the latents' description disagreeing with the manifest is refused before anything is decoded
    with NvpFile.open(path) as nvp:
        manifest = {k: v for k, v in nvp.manifest.items() if k != "segments"}
        arrays, meta = nvp.section(BASE_SECTION), nvp.section_meta(BASE_SECTION)
    latents = {**meta["latents"], "shape": [1 << 20, *meta["latents"]["shape"][1:]]}
    bad.write_bytes(base_nvp_bytes(manifest, arrays, {**meta, "latents": latents}))
    with pytest.raises(NvpFormatError, match="latents described as"):
        read(bad)
    assert SHIPPED.is_file()
