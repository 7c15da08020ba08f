"""nfl: where next-token prediction fails at planning, and what fixes it (a PyTorch Lightning framework)."""

__version__ = "0.1.0"
