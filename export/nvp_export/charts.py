"""Charts written the way every file here is: atomically, so a reader never finds half a PNG."""

from __future__ import annotations

import io
import os

from nvp_rt.atomic import atomic_write

__all__ = ["save_png"]


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Render the matplotlib ``fig`` to PNG at ``path`` (atomically) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
