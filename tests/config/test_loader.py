"""Configuration errors as a user reads them: every line names the environment variable and says what to fix."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, load_settings, unknown_variables
from config.settings import SessionSource, Settings, env_name

UPSTREAM = {"RUM_PROXY_UPSTREAM_URL": "http://agent:8000"}
VALID_SOURCES = "valid: body, query, header, baggage, cookie"


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return caught.value.problems


def test_a_misspelt_required_variable_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"RUM_PROXY_UPSTREAM": "http://agent:8000"})
    assert caught.value.problems == [
        "RUM_PROXY_UPSTREAM_URL: is required (RUM_PROXY_UPSTREAM is set: a typo for RUM_PROXY_UPSTREAM_URL?)"
    ]
    assert caught.value.warnings == [
        "RUM_PROXY_UPSTREAM: not a setting of rum-llmobs-proxy, ignored (did you mean RUM_PROXY_UPSTREAM_URL?)"
    ]


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("RUM_PROXY_ADMIN_PRT", "RUM_PROXY_ADMIN_PORT"),
        ("RUM_PROXY_SOURCE", "RUM_PROXY_SOURCES"),
        ("rum_proxy_log_levle", "RUM_PROXY_LOG_LEVEL"),
        ("RUM_PROXY_MAX_CONNECTION", "RUM_PROXY_MAX_CONNECTIONS"),
        ("RUM_PROXY_NOTHING_LIKE_ANY_SETTING", None),
    ],
)
def test_unknown_variables_get_the_closest_known_name(typo: str, suggestion: str | None) -> None:
    environ = {**UPSTREAM, typo: "1", "OTHER_VARIABLE": "x"}
    load_settings(environ)  # an unknown variable alone is a warning, not an error
    [unknown] = unknown_variables(environ)
    assert (unknown.name, unknown.suggestion) == (typo, suggestion)
    if suggestion is None:
        assert "`rum-llmobs-proxy --help` lists them" in unknown.describe()


def test_every_setting_is_a_known_variable() -> None:
    """The known names come from the settings themselves: a setting added later is never reported unknown."""
    environ = {env_name(field): "1" for field in Settings.model_fields}
    assert unknown_variables(environ) == []


def test_empty_sources_are_refused() -> None:
    assert problems({**UPSTREAM, "RUM_PROXY_SOURCES": ""}) == [
        f"RUM_PROXY_SOURCES: must name at least one source ({VALID_SOURCES}); empty would correlate nothing"
    ]


def test_an_unknown_source_is_named_with_the_valid_ones() -> None:
    assert problems({**UPSTREAM, "RUM_PROXY_SOURCES": "body,nope,smoke"}) == [
        f"RUM_PROXY_SOURCES: 'nope', 'smoke' are not sources ({VALID_SOURCES})"
    ]


def test_sources_keep_their_order_and_ignore_case_and_spaces() -> None:
    settings = load_settings({**UPSTREAM, "RUM_PROXY_SOURCES": " Cookie, body "})
    assert settings.sources == (SessionSource.COOKIE, SessionSource.BODY)


def test_a_repeated_source_is_named() -> None:
    assert problems({**UPSTREAM, "RUM_PROXY_SOURCES": "body,query,body"}) == [
        "RUM_PROXY_SOURCES: 'body' is listed more than once"
    ]


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        ({"RUM_PROXY_ADMIN_PORT": "70000"}, "RUM_PROXY_ADMIN_PORT: Input should be less than or equal to 65535"),
        ({"RUM_PROXY_PORT": "9000", "RUM_PROXY_ADMIN_PORT": "9000"}, "RUM_PROXY_PORT and RUM_PROXY_ADMIN_PORT must "
         "differ (both are 9000)"),
        ({"RUM_PROXY_BODY_READ_TIMEOUT_SECONDS": "0"}, "RUM_PROXY_BODY_READ_TIMEOUT_SECONDS: Input should be "
         "greater than 0"),
        ({"RUM_PROXY_SESSION_HEADER": "bad header"}, "RUM_PROXY_SESSION_HEADER: 'bad header' is not a valid header "
         "name"),
        ({"RUM_PROXY_UPSTREAM_URL": "http://agent/?a=1"}, "RUM_PROXY_UPSTREAM_URL: must not carry a query or "
         "fragment"),
    ],
)  # fmt: skip
def test_messages_name_the_environment_variable(environ: dict[str, str], line: str) -> None:
    lines = problems({**UPSTREAM, **environ})
    assert lines == [line]
    fields = [field for field in Settings.model_fields if f" {field}" in line or line.startswith(field)]
    assert fields == []  # never the settings field's own name (admin_port)
