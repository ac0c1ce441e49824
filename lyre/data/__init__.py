"""Data for pretraining and the zoo: corpus preparation (corpus.py), (source, target) pairs (pairs.py), toy tasks (toy.py)."""
