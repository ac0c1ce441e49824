"""The pages a browser opens: the page at / and the API documentation at /docs.

Everything is served from installed packages, nothing from a CDN, so both work offline: the pages
from lyre/serve/static/, Swagger UI from the `fastapi-offline` package, which bundles
swagger-ui-dist 5 (it reads OpenAPI 3.1, what FastAPI writes). FastAPI's /redoc is not served:
ReDoc's bundle loads its logo from a CDN, whatever the page says.

/ is the chat page for a language model (`chat_router`), a small "label a text" page for a
classifier (`classify_router`); create_app includes the one that fits. Both are templates: their
`{{name}}` fields are filled here (HTML-escaped), not fetched later, so they are right even before
the user has typed an API key that /v1/models would need:
  - the chat page's sampling controls start at lyre's defaults (lyre.core.sampling_defaults, the
    values `lyre chat` uses), and `<body data-rag="on">` when the server answers from documents
    (`lyre serve RUN --rag IDX`) enables its "use my documents" switch (API clients read the
    same fact from /v1/models: `rag`); `<meta name="lyre-tools" content="calculator,...">` names
    the tools the server runs for the page (`--tools`): its chat then goes through POST
    /v1/agent/answer (/v1/models: `tools`);
  - the classifier's page names the model and its labels and shows how to call /v1/classify.
"""

from __future__ import annotations

import html
import json
import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from lyre.core import sampling_defaults as D

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS = "/docs-assets"  # where the Swagger UI files are mounted
MOUNTS = ("/static", DOCS_ASSETS)
FIELD = re.compile(r"\{\{(\w+)\}\}")

router = APIRouter(include_in_schema=False)  # /favicon.ico, /docs: every app
chat_router = APIRouter(include_in_schema=False)  # / of a language model
classify_router = APIRouter(include_in_schema=False)  # / of a classifier


def docs_assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def mount_static(app: FastAPI) -> None:
    """The file trees the pages load (routers cannot carry mounts)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")


def render(name: str, **fields: object) -> str:
    """The template static/NAME with every {{field}} filled (a missing one is a KeyError)."""
    template = (STATIC_DIR / name).read_text(encoding="utf-8")
    return FIELD.sub(lambda m: html.escape(str(fields[m.group(1)])), template)


def render_index(rag: bool, tools: list[str] | None = None) -> str:
    """The chat page: lyre's sampling defaults, the documents switch enabled with an index, and
    the tools the server runs for it (`--tools`: the page then asks /v1/agent/answer)."""
    return render("index.html", rag="on" if rag else "off", tools=",".join(tools or []),
                  temperature=D.DEFAULT_TEMPERATURE,
                  top_k=D.DEFAULT_TOP_K, top_p=D.DEFAULT_TOP_P, max_tokens=D.DEFAULT_MAX_NEW_TOKENS)


def render_classify_page(model: str, labels: list[str], api_key: bool) -> str:
    """The classifier's page: what it serves, a box to try it, and the request to send."""
    body = json.dumps({"input": ["first text", "second text"]})
    auth = " -H 'Authorization: Bearer KEY'" if api_key else ""
    return render("classify.html", model=model, labels=", ".join(labels),
                  curl=f"curl URL/v1/classify -H 'Content-Type: application/json'{auth} -d '{body}'")


def _page(text: str) -> HTMLResponse:
    return HTMLResponse(text, headers={"Cache-Control": "no-cache"})


@chat_router.get("/")
async def index(request: Request):
    return _page(render_index(bool(request.app.state.settings.rag_index),  # `--rag IDX`
                              request.app.state.serve.tool_names))  # `--tools ...`


@classify_router.get("/")
async def classify_page(request: Request):
    state = request.app.state.serve
    return _page(render_classify_page(state.model_name, state.classifier.labels,
                                      bool(state.settings.api_key)))


@router.get("/favicon.ico")
async def favicon():
    return RedirectResponse("/static/favicon.svg")


@router.get("/docs")
async def swagger_ui(request: Request):
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon.svg",
    )
