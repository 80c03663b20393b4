"""``/ui``: the static page is served by the API, open like the probes, and shipped in the wheel."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.main import create_app
from service.api.ui import UI_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_ui_serves_the_page_and_its_modules(client):
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="js/app.js"' in page.text
    app_js = client.get("/ui/js/app.js")
    assert app_js.status_code == 200 and "javascript" in app_js.headers["content-type"]
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/js/missing.js").status_code == 404


def test_every_module_import_resolves_and_nothing_loads_from_the_network():
    files = sorted(UI_DIR.rglob("*"))
    for path in (p for p in files if p.suffix in (".js", ".html", ".css")):
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, f"{path.name} loads from the network"
        for target in re.findall(r'from "(\./[^"]+)"', text):
            assert (path.parent / target).is_file(), f"{path.name} imports missing {target}"


def test_the_wheel_ships_every_ui_file():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["service.api"]
    base = ROOT / "service" / "api"
    for path in (p for p in UI_DIR.rglob("*") if p.is_file()):
        relative = path.relative_to(base).as_posix()
        shipped = (fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns)
        assert any(shipped), f"{relative} is not in pyproject package-data"


def test_ui_stays_open_when_reads_are_protected(settings, sessions, queue):
    keyed = settings.model_copy(update={"api_keys": SecretStr("k-ui-1"), "protect_reads": True})
    with TestClient(create_app(keyed, session_factory=sessions, dispatcher=queue)) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/runs").status_code == 401
