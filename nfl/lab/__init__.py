"""Tools over many runs: sweeps, reports, the reproduction atlas, the benchmark."""
