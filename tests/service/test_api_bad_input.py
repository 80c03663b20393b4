"""Table of bad inputs: each must be a 4xx problem+json naming the offending field, never a 500."""

from __future__ import annotations

import uuid

import pytest
from placeholders import RUN, fill  # tests/service is on sys.path (rootless test dir)

from service.schemas.runs import MAX_SAMPLE_N

BASE = {"model": "ffjord", "dataset": {"name": "8gaussians"}}


def _train(**changes):
    return ("POST", "/train", {"json": {**BASE, **changes}})


CASES = [
    # (id, (method, path, request kwargs), status, field)
    ("unknown model", _train(model="glow"), 422, "model"),
    ("unknown dataset", _train(dataset={"name": "mnist"}), 422, "dataset.name"),
    ("dataset name and id", _train(dataset={"name": "moons", "id": str(uuid.uuid4())}), 422, "dataset"),
    ("unknown uploaded dataset", _train(dataset={"id": str(uuid.uuid4())}), 422, "dataset.id"),
    ("series dataset for ffjord", _train(dataset={"name": "spirals"}), 422, "dataset"),
    ("rtol zero", _train(solver={"rtol": 0}), 422, "solver.rtol"),
    ("rtol negative", _train(solver={"rtol": -1e-3}), 422, "solver.rtol"),
    ("unknown solver", _train(solver={"method": "magic"}), 422, "solver.method"),
    ("max_num_steps zero", _train(solver={"max_num_steps": 0}), 422, "solver.max_num_steps"),
    ("extra solver field", _train(solver={"tolerance": 1}), 422, "solver.tolerance"),
    ("iterations zero", _train(training={"iterations": 0}), 422, "training.iterations"),
    ("lr nan", ("POST", "/train", {"content": b'{"model":"ffjord","dataset":{"name":"moons"},'
                                              b'"training":{"lr":NaN}}',
                                   "headers": {"content-type": "application/json"}}), 422, "training.lr"),
    ("bad hidden dims", _train(model_config={"hidden_dims": [0]}), 422, "model_config.hidden_dims.0"),
    ("unknown model_config key", _train(model_config={"depth": 3}), 422, "model_config.depth"),
    ("T cap below start", _train(model_config={"max_integration_time": 0.2}), 422, "model_config"),
    ("malformed json", ("POST", "/train", {"content": b"{", "headers": {"content-type": "application/json"}}),
     422, "body"),
    ("missing dataset", ("POST", "/train", {"json": {"model": "ffjord"}}), 422, "dataset"),
    ("run id not a uuid", ("GET", "/runs/not-a-uuid", {}), 422, "run_id"),
    ("unknown run", ("GET", f"/runs/{uuid.uuid4()}", {}), 404, "run_id"),
    ("cancel unknown run", ("POST", f"/runs/{uuid.uuid4()}/cancel", {}), 404, "run_id"),
    ("delete unknown run", ("DELETE", f"/runs/{uuid.uuid4()}", {}), 404, "run_id"),
    ("runs limit over 500", ("GET", "/runs", {"params": {"limit": 501}}), 422, "limit"),
    ("runs bad status", ("GET", "/runs", {"params": {"status": "done"}}), 422, "status"),
    ("runs bad cursor", ("GET", "/runs", {"params": {"cursor": "!!"}}), 422, "cursor"),
    ("density wrong dim", ("GET", "/density", {"params": {"run_id": RUN, "x": "1,2,3"}}), 422, "x"),
    ("density ragged", ("GET", "/density", {"params": {"run_id": RUN, "x": ["1,2", "3"]}}), 422, "x"),
    ("density nan", ("GET", "/density", {"params": {"run_id": RUN, "x": "nan,1"}}), 422, "x"),
    ("density inf", ("GET", "/density", {"params": {"run_id": RUN, "x": "1,inf"}}), 422, "x"),
    ("density non-numeric", ("GET", "/density", {"params": {"run_id": RUN, "x": "a,b"}}), 422, "x"),
    ("density empty coordinate", ("GET", "/density", {"params": {"run_id": RUN, "x": "1,"}}), 422, "x"),
    ("density missing x", ("GET", "/density", {"params": {"run_id": RUN}}), 422, "x"),
    ("density bad run id", ("GET", "/density", {"params": {"run_id": "42", "x": "1,2"}}), 422, "run_id"),
    ("post density wrong dim", ("POST", "/density", {"json": {"run_id": RUN, "points": [[1.0]]}}), 422,
     "points"),
    ("post density string", ("POST", "/density", {"json": {"run_id": RUN, "points": [[1, "a"]]}}), 422,
     "points.0.1"),
    ("post density inf", ("POST", "/density", {"content": b'{"run_id":"{run}","points":[[1,Infinity]]}',
                                               "headers": {"content-type": "application/json"}}), 422,
     "points"),
    ("post density empty", ("POST", "/density", {"json": {"run_id": RUN, "points": []}}), 422, "points"),
    ("sample n over limit", ("GET", "/sample", {"params": {"run_id": RUN, "n": MAX_SAMPLE_N + 1}}), 422, "n"),
    ("sample n zero", ("GET", "/sample", {"params": {"run_id": RUN, "n": 0}}), 422, "n"),
    ("sample n non-numeric", ("GET", "/sample", {"params": {"run_id": RUN, "n": "ten"}}), 422, "n"),
    ("sample negative seed", ("GET", "/sample", {"params": {"run_id": RUN, "seed": -1}}), 422, "seed"),
    ("dataset ragged json", ("POST", "/datasets", {"json": {"name": "r", "points": [[1, 2], [3]]}}), 422,
     "points"),
    ("dataset nan json", ("POST", "/datasets", {"content": b'{"name":"n","points":[[1,2],[NaN,1]]}',
                                                "headers": {"content-type": "application/json"}}), 422,
     "points"),
    ("dataset missing name", ("POST", "/datasets", {"json": {"points": [[1, 2], [3, 4]]}}), 422, "name"),
    ("dataset bad csv", ("POST", "/datasets",
                         {"files": {"file": ("d.csv", b"x,y\n1,2\n3,oops\n" + b"1,2\n" * 10)}}),
     422, "file"),
    ("dataset ragged csv", ("POST", "/datasets", {"files": {"file": ("d.csv", b"1,2\n3\n" + b"1,2\n" * 10)}}),
     422, "file"),
    ("dataset oversized csv", ("POST", "/datasets", {"files": {"file": ("d.csv", b"1.0,2.0\n" * 20_000)}}),
     413, "file"),
    ("dataset oversized json", ("POST", "/datasets",
                                {"json": {"name": "big", "points": [[1.5, 2.5]] * 20_000}}),
     413, "file"),
    ("dataset text body", ("POST", "/datasets",
                           {"content": b"1,2", "headers": {"content-type": "text/plain"}}),
     415, "content-type"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "status", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_problem_naming_the_field(client, trained_run, problem, request_, status, field):
    method, path, kwargs = request_
    kwargs = {k: (v if k == "files" else fill(v, trained_run["id"])) for k, v in kwargs.items()}
    body = problem(client.request(method, path, **kwargs), status, field)
    assert body["detail"]


def test_dim_mismatch_names_the_expected_dim(client, trained_run, problem):
    body = problem(client.get("/density", params={"run_id": trained_run["id"], "x": "1,2,3"}), 422, "x")
    assert "expected dim 2" in body["detail"]


def test_a_t_cap_below_the_start_names_both_fields_and_the_fix(client, problem):
    body = problem(client.post("/train", json={**BASE, "model_config": {"max_integration_time": 0.2}}), 422,
                   "model_config")  # fmt: skip
    message = body["errors"][0]["message"]
    assert "max_integration_time (0.2)" in message and "integration_time (0.5)" in message
    assert "raise max_integration_time" in message


def test_unknown_names_list_the_valid_ones(client, problem):
    body = problem(client.post("/train", json={**BASE, "dataset": {"name": "mnist"}}), 422, "dataset.name")
    assert "8gaussians" in body["errors"][0]["message"]
