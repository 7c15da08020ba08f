"""Reports: results tables and plots of sweeps and runs, read back from their logs."""
