"""Learning-rate schedule counted in optimizer steps: linear warmup, then cosine decay to a floor.

The reference code counted its horizon in samples, so its cosine never decayed (``lr_schedule: constant`` of
the system runs that: warmup, then flat); here every
quantity is an optimizer step, the unit of ``trainer.global_step``.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Rises linearly over ``warmup_steps`` (reaching 1 at the end of warmup), then follows half a cosine down to
    ``min_ratio`` at ``decay_steps`` and stays there. ``decay_steps <= 0`` means no decay after warmup.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
