"""One settings table: every ``Settings`` field is documented in ``service/config.py`` by its env name."""

from __future__ import annotations

from pydantic import AliasChoices, SecretStr

import service.config
from service.config import Settings


def _env_name(name: str, field) -> str:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"ODESERVE_{name.upper()}"


def test_every_setting_is_in_the_table():
    doc = service.config.__doc__ or ""
    missing = [
        _env_name(name, field)
        for name, field in Settings.model_fields.items()
        if f"``{_env_name(name, field)}``" not in doc
    ]
    assert not missing, f"document these in the service/config.py table: {missing}"


def test_limits_and_time_limits_are_consistent():
    settings = Settings(
        max_run_seconds=100, hard_limit_grace_s=10, api_keys=SecretStr(" k-secret-1 , ,k-secret-2 ")
    )
    assert settings.hard_time_limit == 110 < settings.visibility_timeout
    assert settings.api_key_values == ("k-secret-1", "k-secret-2") and "k-secret" not in repr(settings)
    assert Settings().api_key_values == () and Settings().cors_origin_list == ()
