"""Build Settings from the environment, turning validation errors into readable lines and exit code 2.

Every line names the environment variable (`RUM_PROXY_ADMIN_PORT`), never the settings field. A `RUM_PROXY_*`
variable that is no setting (a typo, usually) is reported with the closest known name; when it is why a
required setting is missing, the error says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

from pydantic import ValidationError

from config.settings import ENV_PREFIX, Settings, env_name

__all__ = [
    "EXIT_BAD_CONFIG",
    "ConfigError",
    "UnknownVariable",
    "describe_errors",
    "env_name",
    "exit_on_config_error",
    "load_settings",
    "unknown_variables",
]

EXIT_BAD_CONFIG = 2
# How alike a typo and a setting's name (prefix left out) must be for the name to be suggested.
SUGGESTION_CUTOFF = 0.6


class ConfigError(Exception):
    """Configuration is invalid; `problems` holds one readable line per problem, `warnings` the unknown names."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings or []


@dataclass(frozen=True)
class UnknownVariable:
    """A RUM_PROXY_* variable no setting reads, and the known variable it most resembles (if any does)."""

    name: str
    suggestion: str | None

    def describe(self) -> str:
        hint = f"did you mean {self.suggestion}?" if self.suggestion else "`rum-llmobs-proxy --help` lists them"
        return f"{self.name}: not a setting of rum-llmobs-proxy, ignored ({hint})"


def known_variables() -> list[str]:
    return [env_name(field) for field in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[UnknownVariable]:
    """RUM_PROXY_* variables in `environ` (else the process environment) that are no setting, sorted by name."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    unknown = []
    for key in sorted(environ):
        name = key.upper()
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        import difflib  # only for a RUM_PROXY_* variable that is no setting

        # Compared without the shared prefix, which would make every name look alike.
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=SUGGESTION_CUTOFF)
        unknown.append(UnknownVariable(key, suffixes[close[0]] if close else None))
    return unknown


def describe_errors(error: ValidationError, unknown: list[UnknownVariable] | None = None) -> list[str]:
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        field = str(problem["loc"][0]) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        if field not in Settings.model_fields:  # a check across settings: its message names the variables
            lines.append(message)
            continue
        where = env_name(field)
        if problem["type"] == "missing":
            message = "is required"
            typos = [u.name for u in unknown or [] if u.suggestion == where]
            if typos:
                message += f" ({' and '.join(typos)} {'is' if len(typos) == 1 else 'are'} set: a typo for {where}?)"
        lines.append(f"{where}: {message}")
    return lines


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings (from `environ`, else the process environment).

    Raises ConfigError listing every problem, and the unknown RUM_PROXY_* variables as warnings.
    """
    try:
        if environ is None:
            return Settings()  # type: ignore[call-arg]  # required fields come from the environment
        prefixed = (key for key in environ if key.upper().startswith(ENV_PREFIX))
        values = {key[len(ENV_PREFIX) :].lower(): environ[key] for key in prefixed}
        # model_validate reads only the mapping given, never the process environment.
        return Settings.model_validate(values)
    except ValidationError as error:
        unknown = unknown_variables(environ)
        raise ConfigError(describe_errors(error, unknown), [u.describe() for u in unknown]) from None


def exit_on_config_error(error: ConfigError) -> NoReturn:
    for line in error.problems:
        print(f"rum-llmobs-proxy: configuration error: {line}", file=sys.stderr)
    for line in error.warnings:
        print(f"rum-llmobs-proxy: configuration warning: {line}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIG)
