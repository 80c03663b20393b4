"""The web page at ``/ui``: hand-written static files (``service/api/static/ui``), no build step.

The files are plain HTML, CSS and ES modules, served as they are (no CDN: the page works offline).
They are open like the probes (they hold no data); every call the page makes goes through the API
with the key the user typed, stored in the browser's ``localStorage`` (see ``docs/ui.md``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["UI_DIR", "install_ui"]

UI_DIR = Path(__file__).with_name("static") / "ui"


def install_ui(app: FastAPI) -> None:
    """Serve ``/ui/`` (index.html and its assets); ``/ui`` redirects there."""

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
