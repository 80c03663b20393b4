"""``POST /datasets`` (JSON points or a CSV file upload) and ``GET /datasets`` (built-ins + uploads)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from torch import Tensor

from service.api.deps import SessionDep, SettingsDep, StoreDep
from service.api.errors import ApiError, validation_errors
from service.db import repository as repo
from service.ml.data import points_from_csv, points_from_rows
from service.schemas import (
    BUILTIN_DATASETS,
    MAX_UPLOAD_POINTS,
    DatasetList,
    DatasetOut,
    DatasetUpload,
    Problem,
)

__all__ = ["router"]

router = APIRouter(tags=["datasets"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DatasetUpload"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV, one point per line",
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


async def _from_json(request: Request, limit: int) -> tuple[str, Tensor]:
    try:
        upload = DatasetUpload.model_validate_json(await _read_limited(request, limit))
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        raise ApiError(
            422, "validation_error", errors[0][1] if errors else "invalid body", errors=errors
        ) from None
    points = await run_in_threadpool(points_from_rows, upload.points, field="points", min_points=2)
    return upload.name, points


async def _from_form(request: Request, limit: int) -> tuple[str, Tensor]:
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "validation_error", "no file in the form", errors=[("file", "attach a CSV file")])
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise _too_large(limit)
    name_field = form.get("name")
    name = str(name_field) if isinstance(name_field, str) and name_field else (upload.filename or "upload")
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
        422: {"model": Problem, "description": f"Invalid points (at most {MAX_UPLOAD_POINTS})"},
    },
)
async def create_dataset(
    request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> DatasetOut:
    """Upload a point set: JSON ``{"name", "points"}`` or a multipart CSV ``file`` (+ ``name``)."""
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
    digest = await run_in_threadpool(store.save_points, dataset_id, points)
    row = await run_in_threadpool(
        repo.create_dataset,
        session,
        id=dataset_id,
        name=name,
        kind="points",
        dim=int(points.shape[1]),
        n=int(points.shape[0]),
        sha256=digest,
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
