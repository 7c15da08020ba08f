"""``python -m nfl.bench --config FILE``: throughput figures for a config (the benchmark is :mod:`nfl.lab.bench`)."""

import sys

from nfl.lab.bench import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
