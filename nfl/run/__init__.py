"""The plumbing around a run: checkpoints, run folders, config checks, pre-flight, signals, provenance."""
