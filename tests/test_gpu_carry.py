"""bench/gpu_carry.sh: wheels cut into parts here, carried one per device call, joined and installed there.

The device calls are simulated by copying one part at a time from a "here" folder to a "there" folder; the
wheel is a tiny pure-Python one with a random payload, so the parts differ on every run."""

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_carry.sh"
PART = 40_000  # bytes: the random payload below makes several parts


def make_wheel(folder: Path, payload: bytes) -> Path:
    """A minimal valid wheel of a package ``carried`` holding ``payload``."""
    files = {
        "carried/__init__.py": b"from pathlib import Path\nPAYLOAD = Path(__file__).with_name('payload.bin')\n",
        "carried/payload.bin": payload,
        "carried-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: carried\nVersion: 0.1\n",
        "carried-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for name, data in files.items()
    ]
    files["carried-0.1.dist-info/RECORD"] = ("\n".join([*record, "carried-0.1.dist-info/RECORD,,"]) + "\n").encode()
    path = folder / "carried-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def carry(command: str, folder: Path, wheels: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **extra,
        "NVP_CARRY_DIR": str(folder),
        "NVP_CARRY_PART_BYTES": str(PART),
        "NVP_CARRY_CHECK": "0",  # no GPU here: the ONNX Runtime CUDA check is the device's
        "PYTHON": sys.executable,
    }
    if wheels is not None:
        env["NVP_CARRY_WHEELS"] = str(wheels)
    args = ["bash", str(SCRIPT), *command.split()]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def prepared(tmp_path):
    payload = np.random.default_rng().bytes(3 * PART + 1234)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, payload)
    here = tmp_path / "here"
    made = carry("prepare --no-fetch", here, wheels)
    assert made.returncode == 0, made.stderr
    parts = sorted(here.glob("part-*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= PART for p in parts)
    return here, parts, payload, tmp_path / "there"


def test_parts_carried_one_call_at_a_time_install_the_wheel(prepared):
    here, parts, payload, there = prepared
    there.mkdir()
    (there / "SHA256SUMS").write_bytes((here / "SHA256SUMS").read_bytes())
    plan = carry("plan", here)
    assert plan.stdout.count("call ") == len(parts) and "gpu_check.sh --build-only" in plan.stdout
    for i, part in enumerate(parts):  # one device call each
        (there / part.name).write_bytes(part.read_bytes())
        got = carry("receive", there)
        assert got.returncode == 0 and f"{i + 1} of {len(parts)} parts here intact" in got.stdout
    # CUDA's libraries as torch's nvidia-* wheels lay them out: the environment puts their folders on the path.
    fake_site = there.parent / "fake_site"
    for lib in ("nvidia/cu13/lib/libcudart.so.13", "nvidia/cudnn/lib/libcudnn.so.9"):
        (fake_site / lib).parent.mkdir(parents=True)
        (fake_site / lib).touch()
    installed = carry("install", there, PYTHONPATH=str(fake_site))
    assert installed.returncode == 0, installed.stderr
    assert (there / "site" / "carried" / "payload.bin").read_bytes() == payload
    env = (there / "env.sh").read_text()
    assert f'export PYTHONPATH="{there}/site' in env
    assert f"{fake_site}/nvidia/cu13/lib:{fake_site}/nvidia/cudnn/lib" in env


def test_a_corrupt_or_missing_part_is_named_and_nothing_is_installed(prepared):
    here, parts, _, there = prepared
    there.mkdir()
    (there / "SHA256SUMS").write_bytes((here / "SHA256SUMS").read_bytes())
    for part in parts[:-1]:
        (there / part.name).write_bytes(part.read_bytes())
    got = carry("receive", there)
    assert got.returncode == 0 and f"missing: {parts[-1].name}" in got.stdout
    refused = carry("install", there)
    assert refused.returncode != 0 and f"part {parts[-1].name} has not arrived" in refused.stderr
    damaged = bytearray(parts[-1].read_bytes())
    damaged[len(damaged) // 2] ^= 1
    (there / parts[-1].name).write_bytes(bytes(damaged))
    got = carry("receive", there)
    assert got.returncode != 0 and f"corrupt part(s): {parts[-1].name}" in got.stderr.strip().splitlines()[-1]
    refused = carry("install", there)
    assert refused.returncode != 0 and "do not match the manifest's sha256" in refused.stderr
    assert "Traceback" not in refused.stderr and not (there / "site").exists()
