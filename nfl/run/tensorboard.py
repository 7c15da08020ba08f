"""TensorBoard beyond scalars: the HPARAMS table of runs, a per-position accuracy image, and the run's config as text.

:class:`nfl.callbacks.TensorBoardViews` calls these for every ``TensorBoardLogger`` of a run (other loggers get
scalars only):

- :func:`hparams_summaries`: the HParams plugin's three summaries (experiment, session start and end), written
  once at the start of ``fit`` without logging any scalar of their own. The columns are the run's key settings
  (:func:`key_settings`) and the metric tags of :data:`HPARAM_METRICS`; TensorBoard fills each metric from the
  run's own scalar of that tag, its last value, so the table shows final validation and test numbers.
- :func:`per_position_image`: accuracy per answer position, free-running against teacher-forced, with the
  chance line of the decisions, drawn from the metrics a validation or test pass has just logged.
- :func:`config_text`: the resolved config (the ``config.yaml`` LightningCLI writes into the run folder) and
  nfl's provenance, as Markdown for the TEXT tab.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

# The metric columns of the HPARAMS table: final validation and test numbers, and the training budget.
HPARAM_METRICS = (
    "test/exact_match", "test/decision_acc", "test/chance", "test/tf/decision_acc", "val/exact_match",
    "val/decision_acc", "train/loss", "train/graphs_seen",
)
PER_POSITION = "plots/per_position"  # the image tag, after the stage: val/plots/per_position, test/plots/per_position


def _scalar_options(obj: Any, prefix: str) -> dict[str, Any]:
    """``{prefix.name: value}`` for every constructor argument of ``obj``'s class that ``obj`` holds under that
    name as a number, string or bool (what the HParams plugin can show)."""
    out: dict[str, Any] = {}
    try:
        params = inspect.signature(type(obj).__init__).parameters
    except (TypeError, ValueError):
        return out
    for name in params:
        value = getattr(obj, name, None)
        if isinstance(value, (bool, int, float, str)) and not name.startswith("_"):
            out[f"{prefix}.{name}"] = value
    return out


def key_settings(system: Any, trainer: Any) -> dict[str, Any]:
    """The run's key settings: task and its size, objective, backbone and its size, seed, learning rate, batch
    size, steps, processes."""
    task, backbone, objective = system.task, system.backbone, system.objective
    data = trainer.datamodule
    settings: dict[str, Any] = {
        "task": type(task).__name__,
        **_scalar_options(task, "task"),
        "objective": type(objective).__name__,
        **_scalar_options(objective, "objective"),
        "backbone": type(backbone).__name__,
        **_scalar_options(backbone, "backbone"),
        "n_parameters": sum(p.numel() for p in system.parameters()),
        "lr": float(system.hparams.get("lr", float("nan"))),
        "reverse": bool(system.hparams.get("reverse", False)),
        "max_steps": int(trainer.max_steps),
        "world_size": int(trainer.world_size),
    }
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        settings["seed"] = int(seed)
    for name in ("batch_size", "seed"):
        value = getattr(data, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            settings[f"data.{name}"] = value
    return settings


def hparams_summaries(settings: Mapping[str, Any], metrics: tuple[str, ...] = HPARAM_METRICS) -> list:
    """The HParams plugin's experiment, session-start and session-end summaries for one run."""
    from torch.utils.tensorboard.summary import hparams

    return list(hparams(dict(settings), {tag: 0.0 for tag in metrics}))


def per_position_image(metrics: Mapping[str, float], stage: str, step: int) -> Optional[np.ndarray]:
    """An (H, W, 3) uint8 image of ``{stage}/free/pos_i`` and ``{stage}/tf/pos_i`` against the position, with
    ``{stage}/chance`` as a dotted line; None when the stage logged no per-position accuracy."""
    def series(kind: str) -> dict[int, float]:
        head = f"{stage}/{kind}/pos_"
        return {int(k[len(head):]): float(v) for k, v in metrics.items() if k.startswith(head) and k[len(head):].isdigit()}

    free, tf = series("free"), series("tf")
    if not free and not tf:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    for values, style, label in ((free, "o-", "free-running"), (tf, "s--", "teacher-forced")):
        if values:
            positions = sorted(values)
            ax.plot(positions, [values[p] for p in positions], style, label=label, markersize=5)
    chance = metrics.get(f"{stage}/chance")
    if chance is not None:
        ax.axhline(float(chance), color="gray", linestyle=":", label=f"chance at a decision ({float(chance):.2f})")
    exact = metrics.get(f"{stage}/exact_match")
    title = f"{stage} accuracy per answer position, step {step}"
    if exact is not None:
        title += f": exact match {100 * float(exact):.1f}%"
    ax.set(xlabel="answer position", ylabel="accuracy", ylim=(-0.02, 1.02), title=title)
    ax.set_xticks(sorted(set(free) | set(tf)))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def config_text(folder: Optional[str], hparams: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    """Markdown for the TEXT tab: nfl's provenance, then the resolved config (the run folder's ``config.yaml``
    where LightningCLI wrote one, else the system's hyperparameters)."""
    config = None
    if folder is not None and os.path.isfile(os.path.join(folder, "config.yaml")):
        with open(os.path.join(folder, "config.yaml")) as f:
            config = f.read()
    if config is None:
        config = json.dumps({k: v for k, v in hparams.items() if not k.startswith("_")}, indent=2, default=str)
    def cell(value: Any) -> str:
        return ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)

    lines = ["| | |", "|---|---|", *[f"| {k} | {cell(v)} |" for k, v in provenance.items()], ""]
    lines += ["    " + line for line in config.splitlines()]  # an indented block: Markdown's code block
    return "\n".join(lines)
