"""``GET /runs`` sorted by any column, metric or setting and filtered by name and tags, on SQLite and
PostgreSQL: every page of every sort is checked against the order computed here in Python."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import update

from service.db.models import RunRow
from service.db.run_sort import sort_forms

# (name, solver, training, metrics, extra tags) per run; None in metrics: the key is absent.
SEEDS: list[tuple[str | None, dict[str, Any], int, dict[str, Any], list[str]]] = [
    ("alpha", {"method": "dopri5", "rtol": 1e-3, "adjoint": True}, 6, {"test_nll": 3.0}, ["even"]),
    ("Beta", {"method": "rk4", "rtol": 1e-5, "adjoint": False}, 7, {"test_nll": 1.0}, ["odd"]),
    ("beta", {"method": "bosh3", "rtol": 1e-3, "adjoint": True}, 6, {"test_nll": 2.0}, ["even", "big"]),
    (None, {"method": "dopri5", "rtol": 1e-2, "adjoint": False}, 8, {"test_nll": 1.0}, ["odd"]),
    ("gamma", {"method": "euler", "rtol": 1e-4, "adjoint": True}, 6, {}, ["even"]),
    ("x_y", {"method": "rk4", "rtol": 1e-3, "adjoint": True}, 9, {"test_nll": -5.5}, ["odd", "big"]),
    ("xzy", {"method": "dopri5", "rtol": 1e-5, "adjoint": False}, 6, {"test_nll": 1.0}, ["even"]),
    ("delta", {"method": "midpoint", "rtol": 1e-3, "adjoint": True}, 7, {"test_nll": "n/a"}, ["odd"]),
    ("eps", {"method": "dopri5", "rtol": 1e-6, "adjoint": True}, 6, {"test_nll": 0.5}, ["even"]),
]


@pytest.fixture
def seeded(db_api, tiny_run) -> tuple[Any, str, list[dict[str, Any]]]:
    """Nine queued runs tagged with a fresh tag, their metrics and wall clocks set in the database."""
    tag = f"sort-{uuid.uuid4().hex[:8]}"
    runs = []
    for i, (name, solver, iterations, metrics, extra) in enumerate(SEEDS):
        body = {**tiny_run, "solver": solver, "tags": [tag, *extra]}
        body["training"] = {**tiny_run["training"], "iterations": iterations}
        if name is not None:
            body["name"] = name
        response = db_api.client.post("/train", json=body)
        assert response.status_code == 202, response.text
        runs.append(response.json())
        with db_api.sessions() as session:
            row_id = runs[-1]["id"]
            session.execute(
                update(RunRow).where(RunRow.id == row_id).values(metrics=metrics, wall_s=float(i % 4))
            )
            session.commit()
    db_api.queue.queued.clear()
    fresh = [db_api.client.get(f"/runs/{r['id']}").json() for r in runs]
    yield db_api, tag, fresh
    for run in fresh:
        db_api.client.post(f"/runs/{run['id']}/cancel")


def _value(run: dict[str, Any], key: str) -> Any:
    """The sort value as the API defines it (None: missing, sorts last)."""
    if key == "created_at":
        return datetime.fromisoformat(run[key])
    if key in ("name", "status", "model"):
        return run[key]
    section, _, field = key.partition(".")
    value = (run["model_config"] if section == "model_config" else run[section]).get(field)
    if key.startswith("metrics.") and (isinstance(value, bool) or not isinstance(value, int | float)):
        return None
    return value


def _expected(runs: list[dict[str, Any]], key: str, descending: bool, wall: dict[str, float]) -> list[str]:
    def value(run: dict[str, Any]) -> Any:
        return wall[run["id"]] if key == "wall_s" else _value(run, key)

    present = [r for r in runs if value(r) is not None]
    missing = [r for r in runs if value(r) is None]
    present.sort(key=lambda r: (value(r), r["id"]), reverse=descending)
    missing.sort(key=lambda r: r["id"], reverse=descending)
    return [r["id"] for r in present + missing]


def _pages(client, url: str, params: dict[str, Any]) -> tuple[list[str], int]:
    seen, pages, link = [], 0, None
    response = client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [r["id"] for r in body["items"]]
        pages += 1
        link = body["next"]
        if not link:
            return seen, pages
        assert pages <= len(SEEDS), f"pagination does not end: {seen}"  # a broken cursor loops
        response = client.get(link)


SORTS = [
    ("metrics.test_nll", None),
    ("metrics.test_nll", "desc"),
    ("solver.rtol", "asc"),
    ("solver.rtol", "desc"),
    ("solver.method", None),
    ("solver.method", "desc"),
    ("solver.adjoint", "asc"),
    ("training.iterations", "desc"),
    ("name", "asc"),
    ("name", "desc"),
    ("wall_s", "asc"),
    ("created_at", None),
    ("created_at", "asc"),
    ("metrics.never_recorded", "desc"),
]


@pytest.mark.parametrize(("key", "order"), SORTS)
def test_every_page_of_a_sort_is_in_order(seeded, key, order):
    db_api, tag, runs = seeded
    wall = {r["id"]: float(i % 4) for i, r in enumerate(runs)}
    descending = order == "desc" if order else key == "created_at"
    expected = _expected(runs, key, descending, wall)
    params = {"tag": tag, "sort": key, "limit": 2} | ({"order": order} if order else {})
    seen, pages = _pages(db_api.client, "/runs", params)
    assert seen == expected, (key, order)
    assert pages == 5  # 9 runs, 2 a page
    assert _pages(db_api.client, "/runs", {**params, "limit": 500})[0] == expected


def test_metrics_sort_puts_missing_and_non_numbers_last_in_both_orders(seeded):
    db_api, tag, runs = seeded
    by_name = {r["name"]: r["id"] for r in runs}
    for order in ("asc", "desc"):
        seen, _ = _pages(db_api.client, "/runs", {"tag": tag, "sort": "metrics.test_nll", "order": order})
        assert set(seen[-2:]) == {by_name["gamma"], by_name["delta"]}  # absent, and a string
    asc, _ = _pages(db_api.client, "/runs", {"tag": tag, "sort": "metrics.test_nll"})
    assert asc[0] == by_name["x_y"] and asc[1] == by_name["eps"]  # -5.5, then 0.5


def test_name_filter_is_a_case_insensitive_substring_with_wildcards_taken_literally(seeded):
    db_api, tag, runs = seeded
    names = lambda params: sorted(  # noqa: E731
        r["name"] for r in db_api.client.get("/runs", params={"tag": tag, **params}).json()["items"]
    )
    assert names({"name": "BET"}) == ["Beta", "beta"]
    assert names({"name": "x_y"}) == ["x_y"]  # "_" is not a wildcard
    assert names({"name": "%"}) == []
    assert names({"name": "a"}) == ["Beta", "alpha", "beta", "delta", "gamma"]


def test_tag_filter_needs_every_tag(seeded):
    db_api, tag, runs = seeded
    ids = lambda tags: {  # noqa: E731
        r["id"] for r in db_api.client.get("/runs", params={"tag": tags, "limit": 500}).json()["items"]
    }
    by_name = {r["name"]: r["id"] for r in runs}
    assert ids([tag]) == {r["id"] for r in runs}
    assert ids([tag, "big"]) == {by_name["beta"], by_name["x_y"]}
    assert ids([tag, "even", "big"]) == {by_name["beta"]}
    assert ids([tag, "Even"]) == set()  # tags match exactly
    assert ids([tag, "even", "odd"]) == set()
    page = db_api.client.get("/runs", params={"tag": [tag, "even"], "limit": 2, "sort": "name"}).json()
    assert "tag=even" in page["next"] and f"tag={tag}" in page["next"]
    seen, _ = _pages(db_api.client, "/runs", {"tag": [tag, "even"], "limit": 2, "sort": "name"})
    assert seen == [by_name[n] for n in ("alpha", "beta", "eps", "gamma", "xzy")]


@pytest.mark.parametrize(
    "sort", ["metrics", "metrics.", "solver.nope", "model_config.hidden_dims", "bogus", "id"]
)
def test_an_unknown_sort_is_422_listing_the_valid_forms(client, problem, sort):
    body = problem(client.get("/runs", params={"sort": sort}), 422, "sort")
    assert "metrics.<key>" in body["valid"] and "solver.rtol" in body["valid"]
    assert "metrics.<key>" in body["detail"]


def test_a_bad_order_or_cursor_is_422(client, problem):
    body = problem(client.get("/runs", params={"order": "up"}), 422, "order")
    assert "asc" in body["errors"][0]["message"] and "desc" in body["errors"][0]["message"]
    problem(client.get("/runs", params={"cursor": "garbage"}), 422, "cursor")
    problem(client.get("/runs", params={"tag": "bad tag"}), 422, "tag.0")


def test_a_cursor_belongs_to_its_sort(seeded, problem):
    db_api, tag, _ = seeded
    page = db_api.client.get("/runs", params={"tag": tag, "limit": 2, "sort": "solver.rtol"}).json()
    cursor = page["next"].split("cursor=")[1]
    body = problem(db_api.client.get("/runs", params={"tag": tag, "cursor": cursor}), 422, "cursor")
    assert "sort=solver.rtol" in body["detail"]


def test_sort_forms_cover_the_columns_and_settings_the_issue_names():
    forms = sort_forms()
    for key in ("created_at", "updated_at", "name", "status", "wall_s", "iteration", "metrics.<key>"):
        assert key in forms
    for key in (
        "solver.rtol",
        "solver.atol",
        "solver.method",
        "training.iterations",
        "model_config.divergence",
    ):
        assert key in forms
