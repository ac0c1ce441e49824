"""A run on disk: its config (config.py: RunConfig, presets, --set), its directory layout and kind (rundir.py: RunDir), its checkpoints (checkpoint.py)."""
