"""`lyre serve`: an OpenAI-compatible HTTP server and a chat page for a trained run, or
POST /v1/classify for a classifier run.

    from lyre.serve import create_app, ServeSettings
    app = create_app(load_run("runs/iliad-char"), ServeSettings(api_key="secret"))

See docs/serve.md.
"""

from lyre.serve.app import ServeSettings, create_app, load_served

__all__ = ["ServeSettings", "create_app", "load_served"]
