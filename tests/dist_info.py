"""Declaring entry points the way an installed distribution does, for tests of plugin discovery."""

from pathlib import Path


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """A .dist-info declaring ``entry_points`` ({group: {name: "module:attr"}}), as pip writes on install."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items())
    )
    return info
