"""`nvp-export --task`: select, train, and store a route in the .nvp without touching the video payload."""

import numpy as np
import pytest
import torch

import nvp_rt
from nvp_export.cli import main as export_main
from nvp_export.clips import ClipSpec, make_clip, write_clip
from nvp_export.inr import load_nvp
from nvp_export.route.adapter import AdapterSpec, MicroAdapter
from nvp_export.zoo import load_backbone
from nvp_rt.cli import main as nvp_main
from nvp_rt.nvpfile import ROUTES_SECTION, NvpFile


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    clip = d / "clip.mp4"
    write_clip(clip, ClipSpec("chelsea", width=64, height=64, frames=8, seed=1))
    out = d / "clip.nvp"
    assert (
        nvp_main(["encode", str(clip), "-o", str(out), "--params", "60000", "--epochs", "40", "--threads", "1", "-q"])
        == 0
    )
    return clip, out


def test_export_writes_a_route_and_keeps_the_payload(encoded, tmp_path, capsys):
    clip, out = encoded
    before = NvpFile.open(out)
    payload = {name: before.section(name) for name in before.sections if name != ROUTES_SECTION}
    args = [
        "--task",
        "efficientnet_lite0",
        str(out),
        "--source",
        str(clip),
        "--epochs",
        "2",
        "-q",
        "--cka-out",
        str(tmp_path),
    ]
    assert export_main(args) == 0, capsys.readouterr().err
    after = NvpFile.open(out)
    routes = after.routes()
    assert [r.task for r in routes] == ["efficientnet_lite0"]
    route = routes[0]
    assert route.backbone.startswith("efficientnet_lite0-")  # the preset plus its weights' fingerprint
    assert route.tap in [t["name"] for t in after.manifest["taps"]]
    weight = route.arrays["weight0"]
    assert weight.shape == (route.metadata["out_channels"], route.metadata["in_channels"])
    assert np.isfinite(weight).all()
    # The video payload is carried over verbatim.
    assert after.payload_checksum == before.payload_checksum
    for name, arrays in payload.items():
        for key, array in arrays.items():
            np.testing.assert_array_equal(after.section(name)[key], array)
    assert (tmp_path / "cka_efficientnet_lite0.json").is_file()
    assert (tmp_path / "cka_efficientnet_lite0.png").stat().st_size > 0
    # The runtime answers through the exported graphs exactly as the torch path does.
    session = nvp_rt.Session(out)
    logits = session.run(["efficientnet_lite0"], frames=range(8))["efficientnet_lite0"].logits
    backbone = load_backbone("efficientnet_lite0")
    size = tuple(route.metadata["pathways"][0]["size"])
    adapter = MicroAdapter.from_arrays(AdapterSpec(weight.shape[1], weight.shape[0], size), route.arrays)
    with torch.no_grad():
        taps = load_nvp(out).decode(torch.arange(8), until=route.tap)[route.tap]
        reference = backbone.suffix(adapter(taps), route.injection_point).numpy()
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()
    # Exporting the same task again replaces its route rather than adding one.
    assert export_main(args) == 0
    assert len(NvpFile.open(out).routes()) == 1


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--task", "alexnet"], ["unknown task"]),
        (["--task", "slowfast_r50"], ["clips of 32 frames"]),
    ],
)
def test_export_user_errors_are_one_line(encoded, capsys, argv, words):
    _, out = encoded
    capsys.readouterr()
    assert export_main([*argv, str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_export_rejects_a_tampered_file(encoded, tmp_path, capsys):
    _, out = encoded
    bad = tmp_path / "bad.nvp"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    capsys.readouterr()
    assert export_main(["--task", "cls", str(bad), "-q"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_export_refuses_a_source_that_is_not_the_encoded_video(encoded, tmp_path, capsys):
    clip, out = encoded
    other = tmp_path / "other.mp4"
    write_clip(other, ClipSpec("chelsea", width=64, height=64, frames=8, seed=2))  # same photo, size and length
    before = out.read_bytes()
    capsys.readouterr()
    assert export_main(["--task", "efficientnet_lite0", str(out), "--source", str(other), "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not the video clip.nvp was encoded from" in err[1], err  # err[0]: the weights note
    assert out.read_bytes() == before


def test_fingerprint_tells_the_video_from_another_of_its_size(rng):
    from nvp_rt.fingerprint import TOLERANCE, difference, fingerprint

    frames = make_clip(ClipSpec("chelsea", width=64, height=64, frames=8, seed=1))
    stored = fingerprint(frames)
    assert difference(stored, frames) == 0
    noisy = np.clip(frames.astype(int) + rng.integers(-2, 3, frames.shape), 0, 255).astype(np.uint8)
    assert difference(stored, noisy) < 0.5  # a decoder rounding differently is still the same video
    other = make_clip(ClipSpec("chelsea", width=64, height=64, frames=8, seed=2))
    assert difference(stored, other) > TOLERANCE
    assert difference({"method": "unknown"}, frames) is None


def test_short_task_names_name_presets():
    from nvp_export.cli import TASK_KINDS
    from nvp_export.zoo import PRESETS

    for name in ("slowfast", "i3d", "detr", "clip", "vit", "blip", "segformer", "cls", "det", "act", "seg", "cap"):
        assert TASK_KINDS.get(name, name) in PRESETS, name
