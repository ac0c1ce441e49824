"""Chat: prompt templates and fitting a conversation to the context (templates.py), the terminal REPL (repl.py)."""
