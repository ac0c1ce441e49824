"""The pages a browser opens: the chat page at / and the API documentation at /docs.

Everything is served from installed packages, nothing from a CDN, so both work offline: the chat
page from lyre/serve/static/, Swagger UI from the `fastapi-offline` package, which bundles
swagger-ui-dist 5 (it reads OpenAPI 3.1, what FastAPI writes). FastAPI's /redoc is not served:
ReDoc's bundle loads its logo from a CDN, whatever the page says.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS = "/docs-assets"  # where the Swagger UI files are mounted
MOUNTS = ("/static", DOCS_ASSETS)

router = APIRouter(include_in_schema=False)


def docs_assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def mount_static(app: FastAPI) -> None:
    """The file trees the pages load (routers cannot carry mounts)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")


@router.get("/")
async def index():
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


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

