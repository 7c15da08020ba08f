"""``python -m nfl.report``: tables and plots of a sweep or of runs (:mod:`nfl.lab.report`); ``read_scalars(run)``."""

import sys

from nfl.lab.report.logs import read_scalars
from nfl.lab.report.sweep import main

__all__ = ["main", "read_scalars"]

if __name__ == "__main__":
    sys.exit(main())
