"""Figures of the study, as PNG (matplotlib's object API with the Agg canvas; no pyplot state).

Each function is a pure function of arrays that returns the :class:`~matplotlib.figure.Figure` and,
given ``path``, also writes it as a PNG there.

- :func:`plot_circumplex` — class centroids in valence-arousal space with 95% bootstrap circles and
  the degenerate pair marked (study Fig. 4; the trainer calls it with a trial's circumplex.json);
- :func:`plot_confusions` — row-normalised confusion matrices side by side (study Fig. 5);
- :func:`plot_paired_differences` — per-seed paired differences with mean and bootstrap CI;
- :func:`plot_dose_response` — a metric against the OT weight lambda, with the degenerate pair's
  per-class F1 beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from analysis.contrasts import describe

__all__ = ["plot_circumplex", "plot_confusions", "plot_dose_response", "plot_paired_differences", "save_png"]

DEGENERATE_COLOUR = "#c0392b"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")


def plot_circumplex(centroids, class_names: Sequence[str], radial_se=None, degenerate_pair=None,
                    path: str | os.PathLike | None = None, title: str | None = None) -> Figure:
    """Centroids ``(K, 2)`` (valence, arousal) on the circumplex.

    ``radial_se`` (K,) draws a circle of radius ``1.96 * se`` around each centroid (the 95% band of
    the bootstrap, docs/methods.md §4); ``degenerate_pair`` ``(i, j)`` marks the co-located pair in red and
    annotates their distance.
    """
    mu = np.asarray(centroids, dtype=float)
    if mu.ndim != 2 or mu.shape[1] != 2 or mu.shape[0] != len(class_names):
        raise ValueError(f"centroids must have shape ({len(class_names)}, 2), got {mu.shape}")
    fig = _figure(5.2, 5.2)
    ax = fig.add_subplot()
    ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.75", lw=1))
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    pair = tuple(int(i) for i in degenerate_pair) if degenerate_pair is not None else ()
    colours = [DEGENERATE_COLOUR if k in pair else "#2c3e50" for k in range(len(class_names))]
    if radial_se is not None:
        se = np.asarray(radial_se, dtype=float)
        for k, (x, y) in enumerate(mu):
            if np.isfinite(se[k]) and se[k] > 0:
                ax.add_patch(Circle((x, y), 1.96 * se[k], color=colours[k], alpha=0.18, lw=0))
    ax.scatter(mu[:, 0], mu[:, 1], c=colours, s=36, zorder=3)
    for k, name in enumerate(class_names):
        ax.annotate(name, mu[k], xytext=(5, 5), textcoords="offset points", fontsize=9, color=colours[k])
    if pair:
        i, j = pair
        ax.plot(mu[[i, j], 0], mu[[i, j], 1], color=DEGENERATE_COLOUR, ls="--", lw=1.2)
        distance = float(np.linalg.norm(mu[i] - mu[j]))
        ax.text(0.02, 0.02, f"degenerate pair: {class_names[i]}–{class_names[j]} (d = {distance:.3f})",
                transform=ax.transAxes, fontsize=8, color=DEGENERATE_COLOUR)
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xlabel="valence", ylabel="arousal",
           title=title or "Class centroids on the circumplex")
    ax.set_aspect("equal")
    if path is not None:
        save_png(fig, path)
    return fig


def plot_confusions(matrices: Sequence, class_names: Sequence[str], titles: Sequence[str],
                    path: str | os.PathLike | None = None, normalize: bool = True) -> Figure:
    """Confusion matrices (rows true, columns predicted) side by side, row-normalised by default."""
    if len(matrices) != len(titles) or not matrices:
        raise ValueError("give one title per matrix (and at least one matrix)")
    k = len(class_names)
    fig = _figure(0.45 * k * len(matrices) + 1.5, 0.45 * k + 1.6)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, matrix, title in zip(axes, matrices, titles):
        m = np.asarray(matrix, dtype=float)
        if m.shape != (k, k):
            raise ValueError(f"{title}: matrix has shape {m.shape}, expected ({k}, {k})")
        shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12) if normalize else m
        image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        for (r, c), v in np.ndenumerate(shown):
            ax.text(c, r, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if v > 0.5 * (shown.max() or 1) else "black")
        ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
        ax.set(xlabel="predicted", title=title)
        ax.title.set_fontsize(8)
    axes[0].set_ylabel("true")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    if path is not None:
        save_png(fig, path)
    return fig


def plot_paired_differences(differences: Mapping[str, Sequence[float]],
                            intervals: Mapping[str, tuple[float, float]] | None = None, metric: str = "",
                            path: str | os.PathLike | None = None) -> Figure:
    """One row per comparison: every seed's paired difference A - B, their mean and bootstrap CI."""
    labels = list(differences)
    if not labels:
        raise ValueError("no paired differences to plot")
    width = min(16.0, 4.5 + 0.065 * max(len(label) for label in labels))
    fig = _figure(width, 0.42 * len(labels) + 1.5)
    ax = fig.add_subplot()
    ax.axvline(0, color="0.6", lw=1)
    for row, label in enumerate(labels):
        d = np.asarray(differences[label], dtype=float)
        offsets = np.linspace(-0.15, 0.15, d.size) if d.size > 1 else np.zeros(1)
        ax.scatter(d, row + offsets, s=14, color="#2980b9", alpha=0.8, zorder=3)
        if d.size:
            ax.scatter([d.mean()], [row], marker="D", s=40, color="black", zorder=4)
        if intervals is not None and label in intervals and np.all(np.isfinite(intervals[label])):
            low, high = intervals[label]
            ax.plot([low, high], [row, row], color="black", lw=2, zorder=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"paired difference A − B{f' ({metric})' if metric else ''}")
    fig.suptitle(f"Per-seed paired differences{f' — {metric}' if metric else ''} (◆ mean, bar: 95% bootstrap CI)",
                 fontsize=9)
    if path is not None:
        save_png(fig, path)
    return fig


def plot_dose_response(lam, series: Mapping[str, np.ndarray], class_series: Mapping[str, np.ndarray] | None = None,
                       metric: str = "", path: str | os.PathLike | None = None, title: str | None = None) -> Figure:
    """``metric`` against lambda: mean ± std over seeds for each series of shape (len(lam), n_seeds);
    ``class_series`` (e.g. the degenerate pair's per-class F1) in a second panel."""
    lam = np.asarray(lam, dtype=float)
    panels = 2 if class_series else 1
    fig = _figure(5.0 * panels, 3.8)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, data, ylabel in ((axes[0], series, metric), *([(axes[1], class_series, "per-class F1")]
                                                          if class_series else [])):
        for label, values in data.items():
            v = np.asarray(values, dtype=float).reshape(len(lam), -1)
            stats = [describe(row) for row in v]  # mean ± sample std over seeds, as in Table I (NaN: no band)
            mean, std = np.array([s.mean for s in stats]), np.array([s.std for s in stats])
            ax.plot(lam, mean, marker="o", ms=3, label=label)
            ax.fill_between(lam, mean - std, mean + std, alpha=0.15)
        ax.set(xlabel="λ (OT weight)", ylabel=ylabel)
        ax.legend(fontsize=7)
    axes[0].set_title(title or f"Dose–response: {metric} vs λ", fontsize=9)
    if path is not None:
        save_png(fig, path)
    return fig

