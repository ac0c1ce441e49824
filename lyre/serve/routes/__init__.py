"""The server's routes, one module (one APIRouter) per concern:

    completions.py   POST /v1/completions
    chat.py          POST /v1/chat/completions
    models.py        GET /v1/models, /v1/models/{model}; GET /health, /metrics
    page.py          GET / (the chat page), /docs, and their static files

Routes are plain module-level functions; what they need about the served run they get from the
request (`ServeState.of(request)`, i.e. request.app.state.serve), so one module serves any app.
"""
