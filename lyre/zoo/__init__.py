"""The learners' model zoo beyond the GPT: decoding for the encoder-decoder (translate.py), attention maps (attention.py)."""
