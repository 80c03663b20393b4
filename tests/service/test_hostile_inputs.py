"""Hostile inputs: each is refused with a 4xx problem+json (never a 500), and the service stays healthy.

NaN / infinity / 1e308, deep nesting, huge arrays and bodies, wrong content types, invalid UTF-8,
path-like and SQL-looking ids, NUL characters, empty bodies. The client's body limit is 64 KiB
(``tests/service/conftest.py``), so "10 MB" bodies exercise the 413 path.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from placeholders import RUN, fill  # tests/service is on sys.path (rootless test dir)

from service.api.main import create_app

TRAIN = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8]},
    "training": {"iterations": 3, "batch_size": 32},
}
JSON = {"content-type": "application/json"}
TEN_MB = 10 * 1024 * 1024


def _raw(method: str, path: str, body: bytes, content_type: str = "application/json") -> tuple:
    return (method, path, {"content": body, "headers": {"content-type": content_type}})


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


CASES: list[tuple[str, tuple, set[int]]] = [
    # (id, (method, path, request kwargs), acceptable statuses)
    ("NaN literal in training.lr", _raw("POST", "/train", json.dumps(TRAIN).encode()[:-1]
                                         + b', "solver": {"rtol": NaN}}'), {422}),
    ("Infinity in density points", _raw("POST", "/density",
                                        b'{"run_id": "{run}", "points": [[Infinity, 0]]}'), {422}),
    ("-Infinity in dataset upload", _raw("POST", "/datasets",
                                         b'{"name": "x", "points": [[1, 2], [-Infinity, 0]]}'), {422}),
    ("nan in GET /density", ("GET", "/density", {"params": {"run_id": RUN, "x": "nan,0"}}), {422}),
    ("inf as sample n", ("GET", "/sample", {"params": {"run_id": RUN, "n": "inf"}}), {422}),
    ("1e308 in density points", ("POST", "/density", {"json": {"run_id": RUN, "points": [[1e308, 0]]}}),
     {422}),
    ("1e308 in GET /density", ("GET", "/density", {"params": {"run_id": RUN, "x": "1e308,0"}}), {422}),
    ("1e308 in dataset upload", ("POST", "/datasets", {"json": {"name": "x", "points": [[1e308, 0]] * 20}}),
     {422}),
    ("1e308 learning rate", ("POST", "/train", {"json": {**TRAIN, "training": {"lr": 1e308}}}), {422}),
    ("1e308 iterations", ("POST", "/train", {"json": {**TRAIN, "training": {"iterations": 1e308}}}), {422}),
    ("1e308 as sample n", ("GET", "/sample", {"params": {"run_id": RUN, "n": "1e308"}}), {422}),
    ("deeply nested JSON to /train", _raw("POST", "/train", _nested(20_000)), {400, 413, 422}),
    ("deeply nested JSON to /density", _raw("POST", "/density", b'{"run_id": "{run}", "points": '
                                            + _nested(5_000) + b"}"), {400, 422}),
    ("deeply nested JSON to /datasets", _raw("POST", "/datasets", b'{"name": "a", "points": '
                                             + _nested(5_000) + b"}"), {400, 422}),
    ("deeply nested model_config", _raw("POST", "/train", json.dumps(TRAIN).encode()[:-1]
                                        + b', "name": ' + _nested(3_000) + b"}"), {400, 422}),
    ("huge array to /density", ("POST", "/density",
                                {"json": {"run_id": RUN, "points": [[0.0, 0.0]] * 20_000}}), {413, 422}),
    ("too many x in GET /density", ("GET", "/density", {"params": {"run_id": RUN, "x": ["0"] * 10_001}}),
     {413, 414, 422, 431}),
    ("too many columns", ("POST", "/density", {"json": {"run_id": RUN, "points": [[0.0] * 5_000]}}), {422}),
    ("huge sample n", ("GET", "/sample", {"params": {"run_id": RUN, "n": 10**12}}), {422}),
    ("train as text/plain", _raw("POST", "/train", json.dumps(TRAIN).encode(), "text/plain"), {415, 422}),
    ("train as form", ("POST", "/train", {"data": {"model": "ffjord"}}), {415, 422}),
    ("density as XML", _raw("POST", "/density", b"<points/>", "application/xml"), {415, 422}),
    ("dataset as text/csv body", _raw("POST", "/datasets", b"1,2\n" * 20, "text/csv"), {415}),
    ("invalid UTF-8 in CSV", ("POST", "/datasets",
                              {"files": {"file": ("d.csv", b"\xff\xfe" + b"1,2\n" * 20)}}), {422}),
    ("invalid UTF-8 in series CSV", ("POST", "/datasets",
                                     {"files": {"file": ("s.csv", b"series_id,time,v\n\xff,1,1\n")}}), {422}),
    ("invalid UTF-8 in JSON upload", _raw("POST", "/datasets", b'{"name": "\xff", "points": [[1, 2]]}'),
     {400, 422}),
    ("invalid UTF-8 in /train", _raw("POST", "/train", b'{"model": "\xff\xfe"}'), {400, 422}),
    ("path-like run id", ("GET", "/runs/../x", {}), {404, 422}),
    ("encoded path-like run id", ("GET", "/runs/%2e%2e%2fx", {}), {404, 422}),
    ("encoded traversal in cancel", ("POST", "/runs/..%2F..%2Fetc%2Fpasswd/cancel", {}), {404, 422}),
    ("path-like run_id query", ("GET", "/density", {"params": {"run_id": "../../etc/passwd", "x": "0,0"}}),
     {422}),
    ("path-like dataset id", ("POST", "/train", {"json": {**TRAIN, "dataset": {"id": "../x"}}}), {422}),
    ("SQL in run id", ("GET", "/runs/1' OR '1'='1", {}), {422}),
    ("SQL in run_id query", ("GET", "/sample", {"params": {"run_id": "' OR 1=1 --"}}), {422}),
    ("SQL in cursor", ("GET", "/runs", {"params": {"cursor": "' OR 1=1 --"}}), {422}),
    ("SQL in status filter", ("GET", "/runs", {"params": {"status": "queued' OR '1'='1"}}), {422}),
    ("SQL in delete id", ("DELETE", "/runs/x'; DROP TABLE runs; --", {}), {404, 422}),
    ("NUL in a filter", ("GET", "/runs", {"params": {"dataset": "a\x00b"}}), {422}),
    ("NUL in a dataset name", _raw("POST", "/datasets", b'{"name": "a\\u0000b", "points": [[1, 2], [3, 4]]}'),
     {422}),
    ("empty body to /train", _raw("POST", "/train", b""), {422}),
    ("no body to /density", ("POST", "/density", {}), {422}),
    ("empty body to /datasets", _raw("POST", "/datasets", b""), {422}),
    ("empty multipart", _raw("POST", "/datasets", b"", "multipart/form-data; boundary=x"), {400, 422}),
    ("10 MB body to /train", _raw("POST", "/train", b"[" + b"0," * (TEN_MB // 2) + b"0]"), {413}),
    ("10 MB body to /density", _raw("POST", "/density", b" " * TEN_MB), {413}),
    ("10 MB upload to /datasets", ("POST", "/datasets",
                                   {"files": {"file": ("d.csv", b"1,2\n" * (TEN_MB // 4))}}), {413}),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "statuses"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_a_4xx_problem(client, trained_run, request_, statuses):
    method, path, kwargs = request_
    kwargs = {k: (v if k == "files" else fill(v, trained_run["id"])) for k, v in kwargs.items()}
    response = client.request(method, path, **kwargs)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == response.status_code and body["detail"]


@pytest.fixture(scope="module")
def roomy_client(settings, sessions, queue):
    """The app with a 1 MiB body limit, so bodies with one huge CSV cell get past the 413."""
    app = create_app(settings.model_copy(update={"max_upload_bytes": 1 << 20}), session_factory=sessions,
                     dispatcher=queue)  # fmt: skip
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "content",
    [
        b"series_id,time,v\na,0,1\na,1," + b"9" * 200_000 + b"\na,2,1\nb,0,1\nb,1,1\nb,2,1\n",
        b'series_id,time,v\na,0,1\na,1,"' + b"x" * 200_000 + b'"\nb,0,1\nb,1,1\nb,2,1\n',
        b"x,y\n1,2\n3," + b"4" * 200_000 + b"\n5,6\n",
    ],
    ids=["series number", "series quoted", "points"],
)
def test_csv_cell_over_the_csv_field_limit_is_a_422(roomy_client, problem, content):
    """Python's csv refuses cells over 131 072 characters: the answer names the line, not a 500."""
    response = roomy_client.post("/datasets", files={"file": ("s.csv", content)})
    body = problem(response, 422)
    assert "line 3" in body["detail"] and "characters" in body["detail"], body


def test_series_csv_with_invalid_utf8_names_the_line(client, problem):
    response = client.post("/datasets", files={"file": ("s.csv", b"series_id,time,v\na,0,1\n\xff,1,1\n")})
    body = problem(response, 422, "file")
    assert "line 3" in body["detail"] and "UTF-8" in body["detail"], body


def test_sql_looking_text_is_just_text(client, trained_run):
    """Free-text filters and labels are bound parameters: SQL in them matches nothing and breaks nothing."""
    listed = client.get("/runs", params={"dataset": "x' OR '1'='1"})
    assert listed.status_code == 200 and listed.json()["items"] == []
    assert client.get("/runs", params={"limit": 500}).json()["items"]  # the table is still there


def test_service_is_healthy_after_the_table(client, trained_run):
    for _, (method, path, kwargs), _statuses in CASES[:12]:
        kwargs = {k: (v if k == "files" else fill(v, trained_run["id"])) for k, v in kwargs.items()}
        client.request(method, path, **kwargs)
    assert client.get("/livez").json() == {"status": "ok"}
    response = client.get("/density", params={"run_id": trained_run["id"], "x": ["0,0", "1,1"]})
    assert response.status_code == 200 and len(response.json()["log_density"]) == 2
    sample = client.get("/sample", params={"run_id": trained_run["id"], "n": 4, "seed": 1})
    assert sample.status_code == 200 and len(sample.json()["samples"]) == 4


def _chunked_multipart(total: int, sent: list[int]) -> tuple[dict[str, str], object]:
    """A CSV upload of ``total`` bytes sent chunked (no Content-Length); ``sent`` counts chunks."""
    boundary = "odeserve-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    chunk = b"1,2\n" * 256  # 1 KiB

    async def body():
        yield head
        for _ in range(total // len(chunk)):
            sent.append(1)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return {"content-type": f"multipart/form-data; boundary={boundary}"}, body()


def _post_streamed(app, path: str, headers: dict[str, str], body) -> httpx.Response:
    """POST through httpx's ASGI transport, which reads the body lazily (TestClient reads it all)."""

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(path, content=body, headers=headers)

    return asyncio.run(post())


def test_chunked_upload_is_refused_once_past_the_limit_not_after_spooling(client, settings, problem):
    """No Content-Length: the 413 comes as soon as the limit is passed; the rest is never read."""
    sent: list[int] = []
    headers, body = _chunked_multipart(TEN_MB, sent)
    response = _post_streamed(client.app, "/datasets", headers, body)
    problem(response, 413, "file")
    assert "content-length" not in response.request.headers
    limit_chunks = settings.max_upload_bytes // 1024
    assert len(sent) <= limit_chunks + 2, f"read {len(sent)} KiB of a {TEN_MB // 1024} KiB body"


def test_chunked_upload_under_the_limit_is_accepted(client):
    sent: list[int] = []
    headers, body = _chunked_multipart(8 * 1024, sent)
    response = _post_streamed(client.app, "/datasets", headers, body)
    assert response.status_code == 201, response.text
    assert response.json()["n"] == 8 * 256 and len(sent) == 8


def test_problem_details_never_name_server_paths(roomy_client, settings, trained_run, problem):
    """An OSError text inside a domain error (as checkpoint loading wraps them) leaves as a basename."""
    app = roomy_client.app
    secret = str(settings.models_store.resolve() / "runs" / trained_run["id"] / "model.pt")

    @app.get("/test-only/raise-checkpoint-error")
    def _raise() -> None:
        from service.ml.errors import CheckpointError

        raise CheckpointError(
            f"cannot read model.pt: [Errno 13] Permission denied: '{secret}'", fix="retrain the run"
        )

    body = problem(roomy_client.get("/test-only/raise-checkpoint-error"), 409, "run_id")
    text = json.dumps(body)
    assert secret not in text and str(settings.models_store.resolve()) not in text, text
    assert "'<server path>/model.pt'" in body["detail"] and "retrain the run" in body["detail"]
