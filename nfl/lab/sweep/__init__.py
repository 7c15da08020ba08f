"""Sweeps: a grid of runs x seeds from one file, run resumably, in parallel or as shards."""
