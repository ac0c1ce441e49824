"""The server's routes, one module (one APIRouter) per concern:

    completions.py   POST /v1/completions                  (a language model)
    chat.py          POST /v1/chat/completions             (a language model)
    embeddings.py    POST /v1/embeddings, /v1/tokenize     (a language model)
    rag.py           POST /v1/rag/answer                   (a language model, `--rag IDX`)
    classify.py      POST /v1/classify                     (a classifier)
    models.py        GET /v1/models, /v1/models/{model}; GET /health, /metrics   (both)
    page.py          GET / (the chat page or the classifier's), /docs, their static files

Routes are plain module-level functions; what they need about the served run they get from the
request (`ServeState.of(request)`, `ClassifierState.of(request)`, or `served(request)` for what
both kinds have, i.e. request.app.state.serve), so one module serves any app.
"""
