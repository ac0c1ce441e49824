"""The ground floor: errors, files, random state, devices, signals, ranks, sampling defaults, the
OpenAI-compatible HTTP client and the lazy public faces of packages. Nothing here imports the
layers above."""
