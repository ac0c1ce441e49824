"""The ground floor: errors, files, random state, devices, signals, the run config and the run directory. Nothing here imports the layers above."""
