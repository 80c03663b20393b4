"""One settings table: every ``Settings`` field is documented in ``service/config.py`` by its env name."""

from __future__ import annotations

from pathlib import Path

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


def _settings_rows() -> list[str]:
    """The settings table of service/config.py's docstring, in Markdown's single backticks."""
    doc = service.config.__doc__ or ""
    rows = [line.replace("``", "`") for line in doc.splitlines() if line.startswith("| ``")]
    return [row for row in rows if "ODESERVE_" in row or "_URL" in row or "MODELS_STORE" in row]


def test_the_operations_guide_repeats_the_table_unchanged():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    settings_section = guide[guide.index("## Every setting") : guide.index("## Limits")]
    rows = _settings_rows()
    assert len(rows) >= len(Settings.model_fields) - 1
    stale = [row for row in rows if row not in settings_section]
    assert not stale, f"copy these rows of service/config.py into docs/operations.md: {stale}"
