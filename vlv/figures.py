"""Figures shared by the stages: grids of images (rows of conditions, columns of examples)."""

from __future__ import annotations

import os

import numpy as np


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for w in text.split():
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return [*lines, cur]


def save_image_grid(
    path: str | os.PathLike,
    rows: dict[str, np.ndarray],
    n: int = 8,
    column_titles: list[str] | None = None,
    title: str | None = None,
) -> None:
    """One row per entry of ``rows`` (uint8 NxHxWx3 each), the first ``n`` images side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, *(len(v) for v in rows.values()))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.5 * n, 1.6 * len(rows)), dpi=110, squeeze=False)
    for i, (name, images) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(images[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    for j, t in enumerate((column_titles or [])[:n]):
        axes[0, j].set_title("\n".join(_wrap(t, 28)), fontsize=5)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
