"""deploy/datadog: the dashboard and monitors name metrics and tags exactly as the Datadog Agent submits them.

What the Agent submits is measured: the real `rum-llmobs-proxy inject` writes the pod's Autodiscovery annotation,
and the Agent's own OpenMetrics check (datadog-checks-base) runs with that configuration against a real proxy
(single process, and RUM_PROXY_WORKERS=2) after traffic of every session source. The dashboard and monitors must
load into datadog-api-client's models, and every query may only name what that check submitted (or a tag the
Agent's tagger adds). The import script runs against a local stand-in of the Datadog API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from datadog_api_client import Configuration
from datadog_api_client.model_utils import ModelComposed, ModelNormal, UnparsedObject, validate_and_convert_types
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor

from tests.hardening.proxyproc import ProxyProcess, start_proxy
from tests.hardening.upstreams import LoopThread
from tests.support import datadog_check as dd
from tests.support.datadog_check import terms
from tests.support.processes import REPO

pytestmark = pytest.mark.integration

DATADOG = REPO / "deploy" / "datadog"
DASHBOARD = DATADOG / "dashboard.json"
MONITORS = sorted((DATADOG / "monitors").glob("*.json"))
REFERENCE = DATADOG / "README.md"
REFERENCE_BEGIN, REFERENCE_END = "<!-- measured: begin -->", "<!-- measured: end -->"
NAMESPACE = "rum_llmobs_proxy"
WITH_SESSION = ("body", "query", "header", "baggage", "cookie")


# ---- the annotation inject writes ----------------------------------------------------------------------------------
@cache
def injected() -> dict[str, Any]:
    return dd.injected_pod_template()


# ---- what the Agent's check submits --------------------------------------------------------------------------------
@dataclass
class Measurement:
    mode: str
    series: dict[str, dd.Series]  # everything submitted, over both runs
    counts: dict[str, dd.Series]  # the run after the plain traffic (no stream open): exact request counts
    sent: dict[str, int]


def measure(mode: str) -> Measurement:
    template = injected()
    config = dd.openmetrics_annotation(template)
    (instance,) = config["instances"]
    env = {"RUM_PROXY_WORKERS": "2"} if mode == "workers" else {}
    with dd.agent_stand_in() as upstream:
        proxy: ProxyProcess = start_proxy(upstream.url, extra_env=env)
        try:
            resolved = dd.resolve_template_variables(instance, "127.0.0.1", proxy.admin_port)
            sent = dd.drive_every_kind(proxy)
            dd.wait_for_counts(proxy, sent)
            counts = dd.run_check(config.get("init_config") or {}, resolved)
            with dd.open_stream_and_websocket(proxy):
                open_now = dd.run_check(config.get("init_config") or {}, resolved)
        finally:
            proxy.stop()
    series = {name: dd.Series(name, s.type) for name, s in {**counts, **open_now}.items()}
    for run in (counts, open_now):
        for name, submitted in run.items():
            series[name].merge(submitted)
    return Measurement(mode, series, counts, sent)


@pytest.fixture(scope="module", params=["single", "workers"])
def measured(request: pytest.FixtureRequest) -> Measurement:
    return measure(str(request.param))


@pytest.fixture(scope="module")
def single() -> Measurement:
    return measure("single")


def reference_rows(series: dict[str, dd.Series]) -> list[str]:
    rows = []
    for name in sorted(series):
        tags = ", ".join(f"`{key}`" for key in sorted(series[name].tags))
        rows.append(f"| `{name}` | {series[name].type} | {tags} |")
    return rows


def recorded_rows() -> list[str]:
    text = REFERENCE.read_text()
    block = text[text.index(REFERENCE_BEGIN) + len(REFERENCE_BEGIN) : text.index(REFERENCE_END)]
    return [line for line in block.strip().splitlines() if line.startswith("| `")]


def test_the_agent_submits_exactly_the_recorded_reference(measured: Measurement) -> None:
    """deploy/datadog/README.md lists what the check submits; single process and workers submit the same."""
    assert reference_rows(measured.series) == recorded_rows(), (
        f"{measured.mode}: the check submitted, as rows for {REFERENCE.relative_to(REPO)}:\n"
        + "\n".join(reference_rows(measured.series))
    )


def test_no_metric_carries_a_tag_key_datadog_reserves(measured: Measurement) -> None:
    for series in measured.series.values():
        assert not (set(series.tags) & dd.RESERVED_TAG_KEYS), (series.name, sorted(series.tags))


def test_every_session_source_is_counted_under_its_tag(measured: Measurement) -> None:
    requests = measured.series[f"{NAMESPACE}.requests.count"]
    assert requests.tags["session_source"] >= {*WITH_SESSION, "none"}
    refused = measured.series[f"{NAMESPACE}.invalid_session_ids.count"]
    assert any(tags.get("session_source") == "query" and value >= 1 for tags, value in refused.samples)
    errors = measured.series[f"{NAMESPACE}.upstream_errors.count"]
    assert "protocol" in errors.tags["kind"]
    # With one response stream and one WebSocket open: open_streams counts every request being forwarded, the
    # WebSocket included; open_websockets the WebSocket.
    gauges = {
        gauge: max(value for _, value in measured.series[f"{NAMESPACE}.{gauge}"].samples)
        for gauge in ("open_streams", "open_websockets")
    }
    assert gauges == {"open_streams": 2, "open_websockets": 1}


# ---- queries: what they name -------------------------------------------------------------------------------------
def problems(query: str, series: dict[str, dd.Series], variables: dict[str, str]) -> list[str]:
    """Why `query` would draw nothing (or the wrong thing) from what the check submits; [] if nothing."""
    found = []
    for term in terms(query):
        submitted = series.get(term.metric)
        if submitted is None:
            found.append(f"{term.metric}: not submitted")
            continue
        keys = set(submitted.tags) | set(dd.AGENT_TAGS)
        if term.aggregation and term.aggregation.startswith("p") and submitted.type != "distribution":
            found.append(f"{term.aggregation}:{term.metric}: percentiles need a distribution, it is {submitted.type}")
        if term.function == ".as_count()" and submitted.type not in ("monotonic_count", "count"):
            found.append(f"{term.metric}.as_count(): it is a {submitted.type}")
        for item in term.filters:
            if item == "*":
                continue
            if item.startswith("$"):
                key = variables.get(item[1:])
                if key is None:
                    found.append(f"{item}: no such template variable")
                elif key not in keys:
                    found.append(f"{term.metric}: template variable {item} filters on {key!r}, never a tag of it")
                continue
            key, _, value = item.lstrip("!").partition(":")
            if key not in keys:
                found.append(f"{term.metric}: filter on {key!r}, never a tag of it")
            elif key in submitted.tags and value not in submitted.tags[key]:
                found.append(f"{term.metric}: {key}:{value} never submitted (seen: {sorted(submitted.tags[key])})")
        for key in term.by:
            if key not in keys:
                found.append(f"{term.metric}: grouped by {key!r}, never a tag of it")
    return found


def model_problems(model: Any, data: Any, path: str = "$") -> list[str]:
    """Where `data` is not what the API client's model reads: an unknown field (which the client would pass on
    silently), or a value parsed as nothing known (UnparsedObject)."""
    if isinstance(model, ModelComposed):
        model = model.get_oneof_instance()  # type: ignore[no-untyped-call]
    if isinstance(model, UnparsedObject):
        return [f"{path}: matches no known shape"]
    if isinstance(model, ModelNormal):
        assert isinstance(data, dict), path
        by_json = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
        found = [f"{path}.{key}: not a field of {type(model).__name__}" for key in data if key not in by_json]
        for key, value in data.items():
            if key in by_json:
                found += model_problems(getattr(model, by_json[key]), value, f"{path}.{key}")
        return found
    if isinstance(data, list):
        return [problem for i, item in enumerate(data) for problem in model_problems(model[i], item, f"{path}[{i}]")]
    return []


def parse(cls: type[Any], data: dict[str, Any]) -> Any:
    """`data` read by the API client into its typed model, as it reads an API answer (a mistyped value raises)."""
    configuration = Configuration()  # type: ignore[no-untyped-call]
    model = validate_and_convert_types(data, (cls,), [cls.__name__], True, True, configuration)  # type: ignore[no-untyped-call]
    assert isinstance(model, cls)
    return model


def load(path: Path, cls: type[Any]) -> tuple[Any, dict[str, Any]]:
    data = json.loads(path.read_text())
    return parse(cls, data), data


def dashboard_queries(data: dict[str, Any]) -> list[str]:
    return [
        query["query"]
        for widget in data["widgets"]
        for request in widget["definition"].get("requests", [])
        for query in request.get("queries", [])
    ]


def test_the_dashboard_loads_into_the_api_clients_model() -> None:
    model, data = load(DASHBOARD, Dashboard)
    assert model_problems(model, data) == []
    assert len(dashboard_queries(data)) >= 10


def test_the_model_check_catches_a_mistake() -> None:
    """The control for the test above: an unknown field and a mistyped widget are both reported."""
    model, data = load(DASHBOARD, Dashboard)
    data["widgets"][3]["definition"]["requests"][0]["queries"][0]["qurey"] = "typo"
    assert model_problems(parse(Dashboard, data), data) == [
        "$.widgets[3].definition.requests[0].queries[0].qurey: not a field of FormulaAndFunctionMetricQueryDefinition"
    ]


def test_template_variables_are_the_tags_inject_sets() -> None:
    """env, service, kube_namespace and pod_name, each matching a tag the pod's metrics get."""
    _, data = load(DASHBOARD, Dashboard)
    variables = {v["name"]: v["prefix"] for v in data["template_variables"]}
    assert variables == {name: name for name in ("env", "service", "kube_namespace", "pod_name")}
    labels = injected()["metadata"]["labels"]
    for tag, label in dd.AGENT_TAGS.items():
        assert label is None or label in labels, f"the {tag} tag needs the pod label {label}"
    (instance,) = dd.openmetrics_annotation(injected())["instances"]
    assert "pod_name:%%kube_pod_name%%" in instance["tags"]


def test_every_dashboard_query_names_what_the_check_submits(measured: Measurement) -> None:
    _, data = load(DASHBOARD, Dashboard)
    variables = {v["name"]: v["prefix"] for v in data["template_variables"]}
    found = {query: problems(query, measured.series, variables) for query in dashboard_queries(data)}
    assert {query: p for query, p in found.items() if p} == {}


def test_the_query_check_catches_a_misnamed_metric_and_tag() -> None:
    """The control for the test above: names the first annotation submitted, or a reader might guess, are reported
    against a submission shaped like the measured one."""
    requests = dd.Series(f"{NAMESPACE}.requests.count", "monotonic_count")
    requests.add(["session_source:body", "status:200", "pod_name:p"], 1.0)
    requests.add(["session_source:none", "status:200", "pod_name:p"], 1.0)
    duration = dd.Series(f"{NAMESPACE}.request_duration_seconds.sum", "monotonic_count")
    duration.add(["pod_name:p"], 0.1)
    series, variables = {s.name: s for s in (requests, duration)}, {"env": "env"}
    assert (
        problems(
            f"sum:{NAMESPACE}.requests.count{{$env,!session_source:none}} by {{status}}.as_count()", series, variables
        )
        == []
    )
    assert problems("sum:rum_llmobs_proxy.rum_proxy_requests.count{$env}.as_count()", series, variables)
    assert problems(f"sum:{NAMESPACE}.requests.count{{*}} by {{source}}.as_count()", series, variables)
    assert problems(f"sum:{NAMESPACE}.requests.count{{session_source:rum}}.as_count()", series, variables)
    assert problems(f"sum:{NAMESPACE}.requests.count{{$cluster}}.as_count()", series, variables)
    assert problems(f"p95:{NAMESPACE}.request_duration_seconds.sum{{*}}", series, variables)


def test_the_coverage_widget_shows_the_share_of_requests_sent_with_a_session(single: Measurement) -> None:
    """Evaluated on what the check submitted after 5 requests with a valid ID (one per source) and 2 without (none,
    invalid), 1 the agent failed and 1 malformed: 5 of 8, or of 9 when the proxy counts the parser's 400 as a
    request (the core rewrite does: every answered request counted once, the 400 under session_source none)."""
    _, data = load(DASHBOARD, Dashboard)
    (widget,) = [w for w in data["widgets"] if w["definition"].get("title") == "Correlation coverage"]
    (request,) = widget["definition"]["requests"]
    values = {query["name"]: evaluate(query["query"], single.counts) for query in request["queries"]}
    (formula,) = request["formulas"]
    coverage = eval_formula(formula["formula"], values)
    total = sum(single.sent.values())
    assert values["with_session"] == len(WITH_SESSION)
    assert values["all"] in (total - single.sent["malformed"], total), values
    assert coverage == pytest.approx(100 * len(WITH_SESSION) / values["all"])


def evaluate(query: str, series: dict[str, dd.Series]) -> float:
    """A `sum:...{filters}.as_count()` query over one scrape's submissions (template variables match all)."""
    (term,) = terms(query)
    total = 0.0
    for tags, value in series[term.metric].samples:
        matches = True
        for item in term.filters:
            if item == "*" or item.startswith("$"):
                continue
            key, _, wanted = item.lstrip("!").partition(":")
            matches &= (tags.get(key) == wanted) != item.startswith("!")
        total += value if matches else 0.0
    return total


def eval_formula(formula: str, values: dict[str, float]) -> float:
    expression = re.sub(r"[a-z_]+", lambda m: repr(values[m.group()]), formula)
    assert re.fullmatch(r"[0-9.\s*/+()-]+", expression), expression
    return float(eval(expression))  # noqa: S307 - digits and arithmetic only, checked above


# ---- monitors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MONITORS, ids=[p.stem for p in MONITORS])
def test_a_monitor_loads_and_says_what_to_check_first(path: Path) -> None:
    model, data = load(path, Monitor)
    assert model_problems(model, data) == []
    assert data["type"] == "query alert"
    message = data["message"]
    assert "Check first:" in message and "\n1. " in message, message
    assert "README.md#troubleshooting" in message
    assert "## Troubleshooting" in (REPO / "README.md").read_text()
    assert f"rum-llmobs-proxy-monitor:{path.stem}" in data["tags"]


def test_the_three_monitors_exist() -> None:
    assert [p.stem for p in MONITORS] == ["coverage", "errors", "no-traffic"]


@pytest.mark.parametrize("path", MONITORS, ids=[p.stem for p in MONITORS])
def test_every_monitor_query_names_what_the_check_submits(path: Path, measured: Measurement) -> None:
    query = json.loads(path.read_text())["query"]
    assert problems(query, measured.series, {}) == []


def test_the_no_traffic_monitor_watches_a_series_submitted_before_any_request() -> None:
    """A proxy that never had a request has no rum_proxy_requests_total sample (its labels are not known yet):
    the no-traffic monitor must watch a series the check submits anyway, or it would stay silent exactly then."""
    config = dd.openmetrics_annotation(injected())
    (instance,) = config["instances"]
    with dd.agent_stand_in() as upstream:
        proxy = start_proxy(upstream.url)
        try:
            idle = dd.run_check(
                config.get("init_config") or {}, dd.resolve_template_variables(instance, "127.0.0.1", proxy.admin_port)
            )
        finally:
            proxy.stop()
    (term,) = terms(json.loads((DATADOG / "monitors" / "no-traffic.json").read_text())["query"])
    assert term.metric in idle, sorted(idle)
    assert [value for _, value in idle[term.metric].samples] == [0.0]
    assert f"{NAMESPACE}.requests.count" not in idle  # why it is not the obvious series


# ---- the import script ---------------------------------------------------------------------------------------------
class StandInApi:
    """The four Datadog API v1 calls apply.py makes, on loopback: list, create and update of dashboards and
    monitors, kept in memory; every request recorded (method, path, query, API/app key headers, JSON body)."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.calls: list[dict[str, Any]] = []
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.monitors: dict[int, dict[str, Any]] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def start(self) -> StandInApi:
        self.loop.run(self._start())
        return self

    def close(self) -> None:
        if self.runner is not None:
            self.loop.run(self.runner.cleanup())

    async def _handle(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json() if request.can_read_body else {}
        self.calls.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "keys": (request.headers.get("DD-API-KEY"), request.headers.get("DD-APPLICATION-KEY")),
                "body": body,
            }
        )
        parts = request.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "dashboard"]:
            if request.method == "GET" and len(parts) == 3:
                summaries = [{"id": key, "title": d["title"]} for key, d in self.dashboards.items()]
                return web.json_response({"dashboards": summaries})
            if request.method == "POST" and len(parts) == 3:
                key = f"abc-{len(self.dashboards) + 100:03d}-xyz"
                self.dashboards[key] = {**body, "id": key}
                return web.json_response(self.dashboards[key])
            if request.method == "PUT" and len(parts) == 4 and parts[3] in self.dashboards:
                self.dashboards[parts[3]] = {**body, "id": parts[3]}
                return web.json_response(self.dashboards[parts[3]])
        if parts[:3] == ["api", "v1", "monitor"]:
            if request.method == "GET" and len(parts) == 3:
                wanted = set(filter(None, request.query.get("monitor_tags", "").split(",")))
                return web.json_response([m for m in self.monitors.values() if wanted <= set(m.get("tags", []))])
            if request.method == "POST" and len(parts) == 3:
                number = 1000 + len(self.monitors)
                self.monitors[number] = {**body, "id": number}
                return web.json_response(self.monitors[number])
            if request.method == "PUT" and len(parts) == 4 and int(parts[3]) in self.monitors:
                number = int(parts[3])
                self.monitors[number] = {**self.monitors[number], **body}
                return web.json_response(self.monitors[number])
        return web.json_response(
            {"errors": [f"not a call apply.py makes: {request.method} {request.path}"]}, status=404
        )

    def writes(self) -> list[tuple[str, str]]:
        return [(call["method"], call["path"]) for call in self.calls if call["method"] in ("POST", "PUT", "DELETE")]


@pytest.fixture
def stand_in_api() -> Iterator[StandInApi]:
    loop = LoopThread()
    api = StandInApi(loop).start()
    yield api
    api.close()
    loop.stop()


def apply_script(api: StandInApi, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DD_API_KEY": "api-key-for-the-stand-in",
        "DD_APP_KEY": "app-key-for-the-stand-in",
        "DD_SITE": "datadoghq.eu",
        "NO_PROXY": "127.0.0.1",
    }
    command = [sys.executable, str(DATADOG / "apply.py"), "--api-url", api.url, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_apply_creates_then_updates_in_place(stand_in_api: StandInApi) -> None:
    first = apply_script(stand_in_api, "--readme-url", "https://git.example.com/rum-llmobs-proxy/README.md")
    assert first.returncode == 0, first.stderr
    assert stand_in_api.writes() == [("POST", "/api/v1/dashboard")] + [("POST", "/api/v1/monitor")] * len(MONITORS)
    assert {call["keys"] for call in stand_in_api.calls} == {("api-key-for-the-stand-in", "app-key-for-the-stand-in")}
    (dashboard,) = stand_in_api.dashboards.values()
    assert {k: v for k, v in dashboard.items() if k != "id"} == json.loads(DASHBOARD.read_text())
    for monitor in stand_in_api.monitors.values():
        assert "https://git.example.com/rum-llmobs-proxy/README.md#troubleshooting" in monitor["message"]
    ids = (set(stand_in_api.dashboards), set(stand_in_api.monitors))

    stand_in_api.calls.clear()
    second = apply_script(stand_in_api, "--readme-url", "https://git.example.com/rum-llmobs-proxy/README.md")
    assert second.returncode == 0, second.stderr
    (dashboard_id,) = ids[0]
    expected = [("PUT", f"/api/v1/dashboard/{dashboard_id}")] + [
        ("PUT", f"/api/v1/monitor/{key}") for key in sorted(ids[1])
    ]
    assert sorted(stand_in_api.writes()) == sorted(expected), second.stdout
    assert (set(stand_in_api.dashboards), set(stand_in_api.monitors)) == ids, "nothing new was created"
    assert all(
        "type" not in call["body"]
        for call in stand_in_api.calls
        if call["method"] == "PUT" and "/monitor/" in call["path"]
    ), "a monitor's type cannot be changed by an update"


def test_apply_without_keys_changes_nothing(stand_in_api: StandInApi) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    command = [sys.executable, str(DATADOG / "apply.py"), "--api-url", stand_in_api.url]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DD_API_KEY" in result.stderr
    assert stand_in_api.calls == []


def test_apply_dry_run_only_reads(stand_in_api: StandInApi) -> None:
    result = apply_script(stand_in_api, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert stand_in_api.writes() == [] and stand_in_api.calls, result.stdout
    assert "would create" in result.stdout
