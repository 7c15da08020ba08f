"""The report's plots: per-position validation accuracy of a setting, and every setting's exact match, over training.

Per position, free-running beside teacher-forced (or masked diffusion's one-step denoising).
"""

from __future__ import annotations

import os
import re
import statistics


def plot_name(setting: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", setting) + ".png"


def plot_setting(setting: str, members: list[dict], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = [r["scalars"] for r in members]
    positions = sorted(int(t.rsplit("_", 1)[1]) for t in scalars[0] if t.startswith("val/free/pos_"))
    chance = scalars[0]["val/chance"][-1][1] if "val/chance" in scalars[0] else None
    exact = statistics.fmean(s["test/exact_match"][-1][1] for s in scalars)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    cmap = plt.get_cmap("viridis")
    # The right panel: teacher-forced accuracy where the objective has such a pass, else masked diffusion's
    # one-step denoising accuracy, else nothing (teacherless: its one pass is the left panel).
    right = next(((kind, label) for kind, label in (("tf/pos", "teacher-forced"), ("mdm/denoise_pos", "one-step denoising"))
                  if any(t.startswith(f"val/{kind}_") for t in scalars[0])), None)
    for ax, panel in zip(axes, (("free/pos", "free-running"), right)):
        if panel is None:
            ax.text(0.5, 0.5, "no teacher-forced pass", ha="center", va="center", transform=ax.transAxes)
            ax.set(xlabel="training step", ylim=(-0.02, 1.02))
            continue
        kind, label = panel
        for i, pos in enumerate(positions):
            series = [dict(s[f"val/{kind}_{pos}"]) for s in scalars if f"val/{kind}_{pos}" in s]
            if not series:
                continue
            steps = sorted(set.intersection(*(set(s) for s in series)))
            mean = [statistics.fmean(s[step] for s in series) for step in steps]
            # Later positions are drawn thinner on top, so lines that coincide stay visible.
            ax.plot(steps, mean, "o-", color=cmap(i / max(1, len(positions) - 1) * 0.9), markersize=3,
                    linewidth=3.2 - 2.2 * i / max(1, len(positions) - 1), label=f"position {pos}")
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle=":", label=f"chance {chance:.2f}")
        ax.set(xlabel="training step", title=f"{label} accuracy per position", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    if right is not None:
        axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{setting}: test exact match {100 * exact:.1f}% (mean of {len(members)} seeds)")
    fig.tight_layout()
    path = os.path.join(out, plot_name(setting))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


EXACT_PLOT = "exact_match.png"


def plot_exact_match(groups: dict[str, list[dict]], out: str) -> str:
    """Validation exact match over training, one line per setting (mean over its seeds, band: min to max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for setting, members in groups.items():
        series = [dict(r["scalars"]["val/exact_match"]) for r in members]
        steps = sorted(set.intersection(*(set(s) for s in series)))
        values = [[s[step] for s in series] for step in steps]
        ax.plot(steps, [statistics.fmean(v) for v in values], "o-", markersize=3, label=setting)
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
    ax.set(xlabel="training step", ylabel="validation exact match", ylim=(-0.02, 1.02),
           title="exact match over training (mean over seeds; band: min to max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = os.path.join(out, EXACT_PLOT)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

