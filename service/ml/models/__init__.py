"""Model registry: ``MODELS`` maps the names users choose to model classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from service.ml.errors import ConfigError, UnknownNameError
from service.ml.models.base import DensityModel, LossOutput
from service.ml.models.ffjord import FFJORD, FFJORDConfig
from service.ml.models.latent_ode import LatentODE
from service.ml.ode import SolverConfig

__all__ = [
    "MODELS",
    "DensityModel",
    "FFJORDConfig",
    "LossOutput",
    "build_model",
    "parse_model_config",
    "stored_model_config",
]

MODELS: dict[str, type[DensityModel]] = {
    FFJORD.name: FFJORD,
    LatentODE.name: LatentODE,
}


def model_class(name: str) -> type[DensityModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, list(MODELS)) from None


def parse_model_config(name: str, config: Mapping[str, Any] | BaseModel | None) -> BaseModel:
    """Validate a model config dict against the named model's config class."""
    cls = model_class(name)
    if isinstance(config, cls.config_class):
        return config
    raw = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    try:
        return cls.config_class.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])  # empty: a check across fields
        raise ConfigError(
            f"invalid model_config for {name}: {f'{where}: ' if where else ''}{first['msg']}",
            value=first.get("input"),
            fix=f"see the {cls.config_class.__name__} fields in the API docs",
            field=f"model_config.{where}" if where else "model_config",
        ) from None


def stored_model_config(name: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A model config as an earlier run stored it (checkpoint, run row), ready to parse.

    Stored configs are complete, so a field missing from one did not exist yet: it gets the value
    that was in effect then (the config class's ``LEGACY_DEFAULTS``), not today's default.
    """
    legacy = getattr(model_class(name).config_class, "LEGACY_DEFAULTS", {})
    return {**legacy, **dict(config or {})}


def build_model(
    name: str,
    config: Mapping[str, Any] | BaseModel | None,
    dim: int,
    solver: SolverConfig | None = None,
) -> DensityModel:
    """Instantiate a registered model for data of dimension ``dim``."""
    cls = model_class(name)
    return cls(parse_model_config(name, config), dim, solver or cls.default_solver)
