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


def save_captions_figure(
    path: str | os.PathLike, images: np.ndarray, captions: dict[str, list[str]], n: int = 6, width: int = 100
) -> None:
    """Each image beside every captioner's caption of it (one row per image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    fig, axes = plt.subplots(n, 2, figsize=(10, 2.4 * n), dpi=110, gridspec_kw={"width_ratios": [1, 6]}, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i], interpolation="nearest")
        axes[i, 0].axis("off")
        text = "\n".join(
            f"{name}: " + "\n    ".join(_wrap(caps[i], width)) for name, caps in captions.items() if i < len(caps)
        )
        axes[i, 1].text(0, 1, text, va="top", ha="left", fontsize=5.5, family="monospace")
        axes[i, 1].axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
