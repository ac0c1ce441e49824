"""lyre's sampling defaults, the one place they live (without torch, so that building the
command line's flags stays cheap). lyre.engine.sampling (SamplingConfig), the `lyre sample` /
`lyre chat` flags, the chat REPL and the server (for fields a request leaves out) all read them.

They are nanoGPT's sample.py values: temperature 0.8 with the 200 most likely tokens gives
readable text from small models (1.0 with no top-k samples the model's full distribution, long
tail included, and reads worse).
"""

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 200
DEFAULT_TOP_P = 1.0  # off
DEFAULT_REPETITION_PENALTY = 1.0  # off
DEFAULT_MAX_NEW_TOKENS = 256
