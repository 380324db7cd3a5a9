"""Build Settings from the environment, turning validation errors into readable lines and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import NoReturn

from pydantic import ValidationError

from config.settings import Settings

EXIT_BAD_CONFIG = 2


class ConfigError(Exception):
    """Configuration is invalid; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(field: str) -> str:
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def describe_errors(error: ValidationError) -> list[str]:
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in problem["loc"]) if problem["loc"] else ""
        field = location.split(".", 1)[0]
        where = env_name(field) if field in Settings.model_fields else "configuration"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            message = "is required"
        lines.append(f"{where}: {message}")
    return lines


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings (from `environ`, else the process environment).

    Raises ConfigError listing every problem.
    """
    try:
        if environ is None:
            return Settings()  # type: ignore[call-arg]  # required fields come from the environment
        prefix = Settings.model_config.get("env_prefix", "")
        values = {key[len(prefix) :].lower(): value for key, value in environ.items() if key.upper().startswith(prefix)}
        # model_validate reads only the mapping given, never the process environment.
        return Settings.model_validate(values)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def exit_on_config_error(error: ConfigError) -> NoReturn:
    for line in error.problems:
        print(f"rum-llmobs-proxy: configuration error: {line}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIG)
