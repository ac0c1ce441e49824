"""The pages a browser opens: the chat page at / and the API documentation at /docs.

Everything is served from installed packages, nothing from a CDN, so both work offline: the chat
page from lyre/serve/static/, Swagger UI from the `fastapi-offline` package, which bundles
swagger-ui-dist 5 (it reads OpenAPI 3.1, what FastAPI writes). FastAPI's /redoc is not served:
ReDoc's bundle loads its logo from a CDN, whatever the page says.

The chat page is static but for one attribute: `<body data-rag="on">` when the server answers
from documents (`lyre serve RUN --rag IDX`), which enables the page's "use my documents" switch.
It is written into the HTML, not fetched later, so it is right even before the user has typed
an API key that /v1/models would need. API clients read the same fact from /v1/models (`rag`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS = "/docs-assets"  # where the Swagger UI files are mounted
MOUNTS = ("/static", DOCS_ASSETS)
RAG_OFF, RAG_ON = '<body data-rag="off">', '<body data-rag="on">'  # index.html holds RAG_OFF

router = APIRouter(include_in_schema=False)


def docs_assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def mount_static(app: FastAPI) -> None:
    """The file trees the pages load (routers cannot carry mounts)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")


def render_index(rag: bool) -> str:
    """index.html, with the "use my documents" switch enabled when the server has an index."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return html.replace(RAG_OFF, RAG_ON, 1) if rag else html


@router.get("/")
async def index(request: Request):
    rag = bool(request.app.state.settings.rag_index)  # `lyre serve RUN --rag IDX`
    return HTMLResponse(render_index(rag), headers={"Cache-Control": "no-cache"})


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

