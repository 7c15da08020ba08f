"""``python -m nfl.sweep --config SWEEP.yaml``: run a grid of experiments (the runner is :mod:`nfl.lab.sweep.runner`)."""

import sys

from nfl.lab.sweep.runner import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
