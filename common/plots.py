"""Plot helpers: matplotlib's non-interactive backend, PNGs written atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_dir(results_dir: str | os.PathLike, experiment: str) -> Path:
    """``results_dir/<experiment>/`` (created)."""
    d = Path(results_dir) / experiment
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG at ``path`` via a temporary file and a rename; close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def plot_curves(curves: dict[str, list], path, title: str, xlabel: str = "epoch", ylabel: str = "loss",
                logy: bool = False) -> Path:
    """One line per named series (e.g. train/validation loss per epoch)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 30 else None, ms=3, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def bar_with_errors(labels: list[str], means: list[float], stds: list[float], path, title: str, ylabel: str,
                    baselines: dict[str, float] | None = None, top: float | None = None) -> Path:
    """Bars of means with ±std error bars; optional horizontal baseline lines (e.g. majority class). ``top``: the
    y axis ends there, so that one far baseline does not flatten the bars; a baseline above it is named in the
    legend ("above the plot") instead of drawn."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.2))
    x = range(len(labels))
    ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    for i, m in enumerate(means):
        if m is not None:
            ax.annotate(f"{m:.3g}", (i, m), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 3), textcoords="offset points")
    for (name, value), color in zip((baselines or {}).items(), ("tab:red", "tab:green", "tab:purple", "tab:orange")):
        off = top is not None and value > top
        ax.axhline(value, ls="--", color=color, alpha=0 if off else 1,   # set_ylim below keeps it off the axes
                   label=f"{name} ({value:.4g}{', above the plot' if off else ''})")
    ax.set_xticks(list(x), labels, rotation=20, ha="right")
    ax.set(title=title, ylabel=ylabel)
    if top is not None:
        ax.set_ylim(0, top)
    ax.grid(axis="y", alpha=0.3)
    if baselines:
        ax.legend(fontsize=8)
    return save_figure(fig, path)
