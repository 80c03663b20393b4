"""Strict JSON from model outputs: non-finite values become null, response bodies match their schema."""

from __future__ import annotations

import json
import math

import pytest
import torch

from service.api.serving import model_json
from service.schemas.json_values import finite_or_none, json_floats
from service.schemas.runs import DensityOut, SampleOut


def test_finite_values_pass_through_as_python_floats():
    values = torch.tensor([[0.5, -1.25], [3.0, 1e-30]], dtype=torch.float64)
    assert json_floats(values) == [[0.5, -1.25], [3.0, 1e-30]]


@pytest.mark.parametrize("shape", [(5,), (5, 2), (3, 4, 2)])
def test_nan_and_infinities_become_none_in_place_at_any_depth(shape):
    values = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    flat = values.view(-1)
    flat[1], flat[3], flat[-1] = math.nan, math.inf, -math.inf
    got = json_floats(values)
    flattened = _flatten(got)
    expected = [None if i in (1, 3, flat.numel() - 1) else float(i) for i in range(flat.numel())]
    assert flattened == expected


def test_finite_or_none_goes_through_dicts_lists_and_tuples():
    value = {"a": [1.0, math.nan, (2, math.inf)], "b": -math.inf, "c": "text", "d": None}
    assert finite_or_none(value) == {"a": [1.0, None, [2, None]], "b": None, "c": "text", "d": None}


def _flatten(nested):
    if not isinstance(nested, list):
        return [nested]
    return [leaf for item in nested for leaf in _flatten(item)]


def test_model_json_is_the_response_models_own_serialisation():
    body = DensityOut.model_construct(run_id="r1", log_density=[-1.5, None, 2.0])
    response = model_json(body)
    assert response.media_type == "application/json"
    assert json.loads(response.body) == {"run_id": "r1", "log_density": [-1.5, None, 2.0]}
    samples = SampleOut.model_construct(run_id="r2", seed=7, samples=[[0.1, None]])
    assert (
        model_json(samples).body
        == SampleOut(run_id="r2", seed=7, samples=[[0.1, None]]).model_dump_json().encode()
    )
