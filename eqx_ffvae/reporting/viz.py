"""Figures: data-over-model sequence grids, latent-flow GIFs, composed flows, loss curves.

Functions take arrays and a destination path; they never decide where files go. Figures are
built with matplotlib's object API, so saving one never switches the caller's pyplot backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import imageio.v2 as imageio
import numpy as np
from matplotlib.figure import Figure


def _to_hwc(frames: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] → (N, H, W, 3) uint8 (grey images repeated to RGB)."""
    frames = np.clip(np.asarray(frames, np.float32), 0, 1)
    if frames.shape[1] == 1:
        frames = np.repeat(frames, 3, axis=1)
    return (frames.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def tile_rows(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of frames (each (N, C, H, W)) → one uint8 image, rows stacked top to bottom."""
    imgs = [_to_hwc(r) for r in rows]
    n = max(r.shape[0] for r in imgs)
    h, w = imgs[0].shape[1:3]
    canvas = np.full((len(imgs) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(imgs):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def save_rows(path: str | os.PathLike, rows: Sequence[np.ndarray], labels: Sequence[str], title: str = "") -> None:
    """A labelled grid: one row per entry of `rows` (e.g. data over model), frames left to right."""
    grid = tile_rows(rows)
    fig = Figure(figsize=(max(4, grid.shape[1] / 40), max(1.5, grid.shape[0] / 40)), dpi=100)
    ax = fig.subplots()
    ax.imshow(grid, interpolation="nearest")
    h = rows[0].shape[-2] + 2
    ax.set_yticks([2 + h * i + h / 2 for i in range(len(rows))], labels)
    ax.set_xticks([])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


def save_gif(path: str | os.PathLike, rows: Sequence[np.ndarray], fps: float = 4.0) -> None:
    """An animation whose i-th frame shows frame i of every row side by side (rows: (N, C, H, W)),
    each shown for 1/fps s, looping. (imageio's Pillow plugin reads `duration` in milliseconds.)"""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    n = min(r.shape[0] for r in rows)
    frames = [tile_rows([np.stack([r[i] for r in rows])]) for i in range(n)]
    imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)


def save_loss_curves(path: str | os.PathLike, records: Sequence[dict], terms: Sequence[str]) -> None:
    """One panel per loss term over training steps (from metrics.jsonl records)."""
    present = [t for t in terms if any(t in r for r in records)]
    fig = Figure(figsize=(3.2 * len(present), 2.8))
    axes = fig.subplots(1, len(present), squeeze=False)
    steps = np.array([r["step"] for r in records])
    for ax, term in zip(axes[0], present):
        values = np.array([r.get(term, np.nan) for r in records], np.float64)
        ax.plot(steps, values, lw=1)
        ax.set_title(term)
        ax.set_xlabel("step")
        if term in ("loss", "kl0", "hj", "hj_initial") and np.all(values[np.isfinite(values)] > 0):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)


def save_usage_curves(path: str | os.PathLike, records: Sequence[dict], num_flows: int) -> None:
    """Per-flow usage (batch-mean q(k | x̄)) and the mean entropy of q over training: a collapse is
    one usage going to 1 and the others to 0; balanced use sits at 1/K."""
    steps = np.array([r["step"] for r in records])
    fig = Figure(figsize=(7.0, 2.8))
    usage_ax, entropy_ax = fig.subplots(1, 2)
    for k in range(num_flows):
        usage_ax.plot(steps, [r.get(f"usage_{k}", np.nan) for r in records], lw=1, label=f"flow {k}")
    usage_ax.axhline(1.0 / num_flows, color="0.5", lw=0.8, ls="--")
    usage_ax.set_title("flow usage (batch mean of q)")
    usage_ax.set_xlabel("step")
    usage_ax.set_ylim(0, 1)
    usage_ax.legend(fontsize=7)
    entropy_ax.plot(steps, [r.get("q_entropy", np.nan) for r in records], lw=1)
    entropy_ax.axhline(np.log(num_flows), color="0.5", lw=0.8, ls="--")
    entropy_ax.set_title("mean entropy of q (nats)")
    entropy_ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
