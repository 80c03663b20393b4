"""Dataset uploads (JSON and CSV), listing, and training on an uploaded dataset."""

from __future__ import annotations

import math


def test_json_upload_then_train_on_it(client, queue, tiny_run):
    points = [[math.cos(i / 7), math.sin(i / 7) * 0.5] for i in range(60)]
    created = client.post("/datasets", json={"name": "ellipse", "points": points})
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["kind"] == "points" and dataset["dim"] == 2 and dataset["n"] == 60
    run = client.post("/train", json={**tiny_run, "dataset": {"id": dataset["id"]}}).json()
    assert run["dataset"] == {"id": dataset["id"], "name": "ellipse"}
    assert queue.run_pending() == ["succeeded"]
    listed = client.get("/runs", params={"dataset": dataset["id"]}).json()["items"]
    assert [r["id"] for r in listed] == [run["id"]]


def test_csv_upload_with_header(client):
    csv = b"x,y,z\n" + b"".join(f"{i},{i * 0.5},{-i}\n".encode() for i in range(12))
    created = client.post("/datasets", files={"file": ("cube.csv", csv, "text/csv")}, data={"name": "cube"})
    assert created.status_code == 201, created.text
    assert created.json()["dim"] == 3 and created.json()["n"] == 12 and created.json()["name"] == "cube"


def test_list_has_builtins_and_uploads(client):
    client.post("/datasets", json={"name": "pair", "points": [[0.0], [1.0]]})
    items = client.get("/datasets").json()["items"]
    builtin = {d["name"] for d in items if d["builtin"]}
    assert {"8gaussians", "moons", "spirals"} <= builtin
    assert "pair" in {d["name"] for d in items if not d["builtin"]}
