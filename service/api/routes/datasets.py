"""``POST /datasets`` (JSON points or series, or a CSV upload) and ``GET /datasets`` (built-ins + uploads).

A CSV whose header starts with ``series_id,time`` is a long-format time-series upload (one row per
observation, an empty cell for a missing value); any other CSV is a point set.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message
from torch import Tensor

from service.api.auth import RequireWriteKey
from service.api.deps import SessionDep, SettingsDep, StoreDep
from service.api.errors import ApiError, validation_errors
from service.db import repository as repo
from service.ml.data import points_from_csv, points_from_rows
from service.ml.errors import DataError
from service.ml.series import Series
from service.ml.series_io import series_from_csv, series_from_json
from service.schemas.runs import (
    BUILTIN_DATASETS,
    MAX_UPLOAD_POINTS,
    DatasetList,
    DatasetOut,
    DatasetUpload,
    Problem,
)
from service.schemas.series import SeriesUpload
from service.storage.series_store import save_series

__all__ = ["router"]

router = APIRouter(tags=["datasets"])

_REF = "#/components/schemas/{model}"

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {k: v for k, v in model.model_json_schema(ref_template=_REF).items() if k != "$defs"}
                        for model in (DatasetUpload, SeriesUpload)
                    ]
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                "CSV: one point per line, or series_id,time,value_1,... "
                                "(one observation per line) for time series"
                            ),
                        },
                        "name": {"type": "string", "maxLength": 200},
                    },
                }
            },
        },
    }
}


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the upload is larger than {limit} bytes",
        errors=[("file", f"send at most {limit} bytes, or fewer points")],
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it grows past ``limit`` (chunked bodies have no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _has_series(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # reported by pydantic below (nesting too deep included)
        return False
    return isinstance(parsed, dict) and "series" in parsed


def _enough_series(series: list[Series], field: str) -> list[Series]:
    if len(series) < 2:
        raise DataError(
            f"got {len(series)} series; a training set needs at least 2 (train/test split)",
            value=len(series),
            fix="upload two or more series",
            field=field,
        )
    return series


async def _from_json(request: Request, limit: int) -> tuple[str, Tensor | list[Series]]:
    body = await _read_limited(request, limit)
    try:
        upload = (SeriesUpload if _has_series(body) else DatasetUpload).model_validate_json(body)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        raise ApiError(
            422, "validation_error", errors[0][1] if errors else "invalid body", errors=errors
        ) from None
    if isinstance(upload, SeriesUpload):
        raw = [item.model_dump() for item in upload.series]
        return upload.name, await run_in_threadpool(series_from_json, raw)
    points = await run_in_threadpool(points_from_rows, upload.points, field="points", min_points=2)
    return upload.name, points


def _is_series_csv(content: bytes) -> bool:
    first = content.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)[0]
    return first.split(b",", 1)[0].strip().lower() == b"series_id"


def _limited(request: Request, limit: int) -> Request:
    """``request`` whose body raises 413 as soon as more than ``limit`` bytes have arrived.

    The multipart parser spools a file part to disk as it reads; a chunked body (no
    ``Content-Length``) is refused mid-stream instead of after it was stored whole."""
    receive, received = request.receive, 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, limited)


async def _from_form(request: Request, limit: int) -> tuple[str, Tensor | list[Series]]:
    form = await _limited(request, limit).form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                422, "validation_error", "no file in the form", errors=[("file", "attach a CSV file")]
            )
        content = await upload.read(limit + 1)
        name_field = form.get("name")
    finally:
        await form.close()
    if len(content) > limit:
        raise _too_large(limit)
    name = str(name_field) if isinstance(name_field, str) and name_field else (upload.filename or "upload")
    if _is_series_csv(content):
        series = await run_in_threadpool(series_from_csv, content)
        return name[:200], _enough_series(series, "file")
    points = await run_in_threadpool(points_from_csv, content, max_points=MAX_UPLOAD_POINTS)
    return name[:200], points


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=_UPLOAD_BODY,
    responses={
        413: {"model": Problem, "description": "Upload over the byte limit (ODESERVE_MAX_UPLOAD_BYTES)"},
        415: {"model": Problem, "description": "Neither JSON nor multipart"},
        422: {
            "model": Problem,
            "description": (
                f"Invalid points (at most {MAX_UPLOAD_POINTS}) or series (unsorted or duplicate "
                "times, ragged values, NaN/inf, fewer than 3 points); the problem names the row, "
                "series index or CSV line"
            ),
        },
    },
)
async def create_dataset(
    request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep, _: RequireWriteKey
) -> DatasetOut:
    """Upload a point set or time series: JSON ``{"name", "points"}``, JSON ``{"name", "series":
    [{"times", "values"}]}`` (null: missing value), or a multipart CSV ``file`` (+ ``name``)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise _too_large(settings.max_upload_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        name, points = await _from_json(request, settings.max_upload_bytes)
    elif content_type == "multipart/form-data":
        name, points = await _from_form(request, settings.max_upload_bytes)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {content_type or 'none'} is not accepted",
            errors=[("content-type", "send application/json or multipart/form-data with a CSV file")],
        )
    dataset_id = str(uuid.uuid4())
    if isinstance(points, Tensor):
        kind, dim, n = "points", int(points.shape[1]), int(points.shape[0])
        digest = await run_in_threadpool(store.save_points, dataset_id, points)
    else:
        kind, dim, n = "series", points[0].dim, len(points)
        digest = await run_in_threadpool(save_series, store, dataset_id, points)
    row = await run_in_threadpool(
        repo.create_dataset, session, id=dataset_id, name=name, kind=kind, dim=dim, n=n, sha256=digest
    )
    return DatasetOut.from_row(row)


@router.get("/datasets", response_model=DatasetList)
def list_datasets(session: SessionDep) -> DatasetList:
    """Built-in datasets (by name) followed by uploads (by id)."""
    builtins = [
        DatasetOut(id=name, name=name, kind=kind, dim=dim, builtin=True, description=text)  # type: ignore[arg-type]
        for name, (kind, dim, text) in BUILTIN_DATASETS.items()
    ]
    uploads = [DatasetOut.from_row(r) for r in repo.list_datasets(session)]
    return DatasetList(items=builtins + uploads)
