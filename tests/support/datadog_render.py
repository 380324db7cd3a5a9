"""A local picture of deploy/datadog/dashboard.json, drawn from a real proxy's metrics as the Agent's check submits
them: `python -m tests.support.datadog_render docs/datadog-dashboard.png` (needs `pip install matplotlib`).

Not Datadog's UI. A real proxy (single process) takes a scripted mix of traffic in steps; after each step the
Agent's OpenMetrics check (datadog-checks-base), configured with the annotation `inject` writes, scrapes it once, as
the Agent does every 15 s. Each widget's own queries and formulas are then evaluated on what the check submitted:
counts as the difference between two runs (as the Agent submits a monotonic_count), gauges as read, percentiles
from the distribution's buckets, interpolated inside a bucket as the Agent spreads a bucket's points.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import random
import re
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.hardening.proxyproc import ProxyProcess, start_proxy
from tests.hardening.rawhttp import Connection, build_request, exchange, websocket_connect
from tests.hardening.upstreams import LoopThread
from tests.support import datadog_check as dd
from tests.support.processes import REPO

DASHBOARD = REPO / "deploy" / "datadog" / "dashboard.json"
STEPS = 24
REQUESTS_PER_STEP = 40  # step_requests' mix
COOKIE_DROPPED = range(9, 15)  # "a frontend release stops sending the cookie"
AGENT_FAILING = range(17, 19)  # "the agent fails a third of the requests"
MALFORMED_AT = {
    4: dd.MALFORMED,
    12: b"POST /chat HTTP/1.0\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    20: dd.MALFORMED,
}
OPEN_STREAMS = [0, 0, 1, 2, 2, 3, 3, 2, 2, 1, 1, 2, 3, 4, 3, 2, 2, 1, 0, 0, 1, 1, 2, 2]
OPEN_WEBSOCKETS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 0, 0, 1, 1]
Context = tuple[str, frozenset[tuple[str, str]]]


# ---- an agent with latency ---------------------------------------------------------------------------------------
class Agent:
    """An aiohttp agent stand-in: answers after `x-delay-ms`; /fail drops the connection; /hold streams until the
    client leaves; /ws is an echo WebSocket."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/fail{tail:.*}", self._fail)
        app.router.add_route("*", "/hold{tail:.*}", self._hold)
        app.router.add_get("/ws{tail:.*}", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def start(self) -> Agent:
        self.loop.run(self._start())
        return self

    def close(self) -> None:
        if self.runner is not None:
            self.loop.run(self.runner.cleanup())

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(int(request.headers.get("x-delay-ms", "0")) / 1000)
        return web.json_response({"answer": "ok"})

    async def _fail(self, request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def _hold(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.Event().wait()  # until the client leaves (handler cancellation)
        return response

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(str(message.data))
        return ws


# ---- the traffic -------------------------------------------------------------------------------------------------
def step_requests(step: int, rng: random.Random) -> list[bytes]:
    """One step's requests: 35 of 40 with a session ID, by the share each source might have in a deployment; the
    cookie's 10 arrive without one (7) or with a broken one (3) while COOKIE_DROPPED; a third go to /fail while
    AGENT_FAILING. Latency: mostly around 60 ms, one in ten 0.4-1.2 s (a long generation)."""
    sources = ["body"] * 14 + ["cookie"] * 10 + ["baggage"] * 6 + ["query"] * 3 + ["header"] * 2 + ["none"] * 5
    if step in COOKIE_DROPPED:
        sources = [source for source in sources if source != "cookie"] + ["none"] * 7 + ["invalid"] * 3
    rng.shuffle(sources)
    requests = []
    for number, source in enumerate(sources):
        if step in AGENT_FAILING and number % 3 == 0:
            requests.append(build_request("POST", "/fail", [("Content-Type", "application/json")], b"{}"))
            continue
        delay = int(rng.lognormvariate(math.log(60), 0.5)) if rng.random() > 0.1 else rng.randint(400, 1200)
        head, _, body = dd.request_from(source, "/chat").partition(b"\r\n\r\n")
        requests.append(head + f"\r\nx-delay-ms: {delay}".encode() + b"\r\n\r\n" + body)
    return requests


@contextlib.contextmanager
def held(proxy: ProxyProcess) -> Iterator[list[Connection]]:
    """Streams and WebSockets kept open through the proxy; closed at the end."""
    connections: list[Connection] = []
    try:
        yield connections
    finally:
        for connection in connections:
            connection.abort()


def hold_open(proxy: ProxyProcess, streams: list[Connection], sockets: list[Connection], step: int) -> None:
    while len(streams) > OPEN_STREAMS[step]:
        streams.pop().abort()  # a reset: the proxy notices a leaving client at once
    while len(streams) < OPEN_STREAMS[step]:
        stream = Connection(proxy.port)
        stream.send(dd.request_from("body", "/hold"))
        assert stream.read_head().status == 200
        streams.append(stream)
    while len(sockets) > OPEN_WEBSOCKETS[step]:
        sockets.pop().abort()
    while len(sockets) < OPEN_WEBSOCKETS[step]:
        ws, response = websocket_connect(proxy.port, "/ws?session_id=" + dd.SESSION_ID)
        assert response.status == 101
        sockets.append(ws)


def wait_until_counted(proxy: ProxyProcess, streams: int, sockets: int) -> None:
    """Closed streams and WebSockets are counted once the proxy saw the client leave: a bounded wait on that."""
    for _ in range(200):
        # A bridged WebSocket is a request in flight too: open_streams counts it.
        if proxy.metric_sum("rum_proxy_open_streams") == streams + sockets and (
            proxy.metric_sum("rum_proxy_open_websockets") == sockets
        ):
            return
        time.sleep(0.02)  # interval of a bounded poll of the proxy's gauges
    raise AssertionError(
        f"the proxy's open streams/WebSockets did not settle at {streams}/{sockets}: "
        f"{proxy.metric_sum('rum_proxy_open_streams')}/{proxy.metric_sum('rum_proxy_open_websockets')}"
    )


# ---- what the check submitted, step by step -----------------------------------------------------------------------
def collect() -> list[dict[str, dd.Series]]:
    """One check run after each step of the traffic."""
    rng = random.Random(21)  # noqa: S311 - a reproducible traffic mix, not a secret
    config = dd.openmetrics_annotation(dd.injected_pod_template())
    (instance,) = config["instances"]
    runs = []
    loop = LoopThread()
    agent = Agent(loop).start()
    proxy = start_proxy(agent.url)
    try:
        resolved = dd.resolve_template_variables(instance, "127.0.0.1", proxy.admin_port)
        runs.append(dd.run_check(config.get("init_config") or {}, resolved))  # the baseline the Agent keeps
        with held(proxy) as streams, held(proxy) as sockets, concurrent.futures.ThreadPoolExecutor(4) as pool:
            for step in range(STEPS):
                hold_open(proxy, streams, sockets, step)
                list(pool.map(lambda request: exchange(proxy.port, request), step_requests(step, rng)))
                if step in MALFORMED_AT:
                    exchange(proxy.port, MALFORMED_AT[step])
                wait_until_counted(proxy, len(streams), len(sockets))
                runs.append(dd.run_check(config.get("init_config") or {}, resolved))
    finally:
        proxy.stop()
        agent.close()
        loop.stop()
    return runs


def tagger_tags() -> dict[str, str]:
    """The tags the Agent's tagger would add for the example pod (deploy/kubernetes/example): its labels' env and
    the sidecar's service, and its namespace. The check itself cannot show these (datadog_check.AGENT_TAGS)."""
    template = dd.injected_pod_template()
    labels = template["metadata"]["labels"]
    namespace = yaml.safe_load((dd.EXAMPLE_DEPLOYMENT.parent / "namespace.yaml").read_text())["metadata"]["name"]
    return {
        "env": labels["tags.datadoghq.com/env"],
        "service": labels[f"tags.datadoghq.com/{dd.SIDECAR}.service"],
        "kube_namespace": namespace,
    }


def by_context(run: dict[str, dd.Series], added: dict[str, str]) -> dict[Context, float]:
    values: dict[Context, float] = {}
    for name, series in run.items():
        for tags, value in series.samples:
            values[(name, frozenset({**tags, **added}.items()))] = value
    return values


def steps_of(runs: list[dict[str, dd.Series]]) -> list[dict[Context, float]]:
    """Per step: counts as the increase since the previous run, gauges as read."""
    types = {name: series.type for run in runs for name, series in run.items()}
    added = tagger_tags()
    steps = []
    for before, after in zip(runs, runs[1:], strict=False):
        old, new = by_context(before, added), by_context(after, added)
        steps.append(
            {
                context: value - old.get(context, 0.0) if types[context[0]] != "gauge" else value
                for context, value in new.items()
            }
        )
    return steps


# ---- the widgets' queries and formulas --------------------------------------------------------------------------
Groups = dict[tuple[str, ...], float]


def matches(tags: dict[str, str], filters: list[str]) -> bool:
    for item in filters:
        if item == "*" or item.startswith("$"):  # a template variable at its default, `*`
            continue
        key, _, wanted = item.lstrip("!").partition(":")
        if (tags.get(key) == wanted) == item.startswith("!"):
            return False
    return True


def percentile(buckets: list[tuple[float, float, float]], q: float) -> float:
    """The q-quantile of bucket counts (lower, upper, count), linear inside the bucket."""
    total = sum(count for _, _, count in buckets)
    if not total:
        return math.nan
    target, seen = q * total, 0.0
    for lower, upper, count in sorted(buckets):
        if count and seen + count >= target:
            upper = lower if math.isinf(upper) else upper
            return lower + (upper - lower) * (target - seen) / count
        seen += count
    return math.nan


def evaluate(query: str, step: dict[Context, float]) -> Groups:
    (term,) = dd.terms(query)
    groups: Groups = defaultdict(float)
    buckets: list[tuple[float, float, float]] = []
    for (name, frozen), value in step.items():
        tags = dict(frozen)
        if name != term.metric or not matches(tags, term.filters):
            continue
        if term.aggregation and term.aggregation.startswith("p"):
            buckets.append((float(tags["lower_bound"]), float(tags["upper_bound"]), value))
        else:
            groups[tuple(tags.get(key, "n/a") for key in term.by)] += value
    if term.aggregation and term.aggregation.startswith("p"):
        return {(): percentile(buckets, int(term.aggregation[1:]) / 100)}
    return dict(groups)


def formula_values(formula: str, results: dict[str, Groups]) -> Groups:
    """A formula over named queries; a grouped query's groups, with the ungrouped ones the same for each."""
    names = [name for name in re.findall(r"[a-z_][a-z0-9_]*", formula) if name in results]
    grouped = [name for name in names if any(key != () for key in results[name])]
    keys = sorted({key for name in grouped for key in results[name]}) if grouped else [()]
    out: Groups = {}
    for key in keys:
        values = {name: results[name].get(key if name in grouped else (), 0.0) for name in names}
        expression = re.sub(r"[a-z_][a-z0-9_]*", partial(_value_of, values), formula)
        try:
            out[key] = float(eval(expression))  # noqa: S307 - the dashboard's own arithmetic on numbers
        except ZeroDivisionError:
            out[key] = math.nan
    return out


def _value_of(values: dict[str, float], match: re.Match[str]) -> str:
    return repr(values[match.group()])


def widget_series(request: dict[str, Any], steps: list[dict[Context, float]]) -> dict[str, list[float]]:
    lines: dict[str, list[float]] = defaultdict(lambda: [math.nan] * len(steps))
    for i, step in enumerate(steps):
        results = {query["name"]: evaluate(query["query"], step) for query in request["queries"]}
        grouped = any(dd.terms(query["query"])[0].by for query in request["queries"])
        for formula in request["formulas"]:
            for key, value in formula_values(formula["formula"], results).items():
                if grouped and not key:
                    continue  # nothing submitted for any group yet
                label = ", ".join(key) if key else formula.get("alias", formula["formula"])
                lines[label][i] = value
    return dict(lines)


def scalar(request: dict[str, Any], steps: list[dict[Context, float]]) -> Groups:
    window: dict[Context, float] = defaultdict(float)
    for step in steps:
        for context, value in step.items():
            window[context] += value
    results = {query["name"]: evaluate(query["query"], window) for query in request["queries"]}
    (formula,) = request["formulas"]
    return formula_values(formula["formula"], results)


# ---- drawing -----------------------------------------------------------------------------------------------------
PALETTE = ["#632ca6", "#2f88d0", "#3fa66f", "#e8a33d", "#d6416b", "#7c5cc4", "#1bb3a6", "#a0a0a0", "#b5558a"]


def draw(steps: list[dict[Context, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    widgets = [w["definition"] for w in dashboard["widgets"] if w["definition"]["type"] != "note"]
    values = [w for w in widgets if w["type"] == "query_value"]
    others = sorted((w for w in widgets if w["type"] != "query_value"), key=lambda w: w["type"] != "toplist")
    figure = plt.figure(figsize=(18, 15), dpi=80, facecolor="#f7f7fa")
    grid = figure.add_gridspec(4, 3, height_ratios=[0.6, 1, 1, 1], hspace=0.5, wspace=0.2, top=0.86, bottom=0.04)
    figure.suptitle(
        f"{dashboard['title']}: a local rendering of deploy/datadog/dashboard.json, not Datadog's UI",
        fontsize=18,
        fontweight="bold",
        y=0.985,
    )
    figure.text(
        0.5,
        0.955,
        "\n".join(
            [
                "Each point is one run of the Agent's OpenMetrics check (datadog-checks-base) against a real "
                "rum-llmobs-proxy, configured as `inject` writes it, after one step of scripted traffic;",
                "each widget's own queries and formulas are evaluated on what the check submitted (env, service, "
                "kube_namespace: the tags the Agent's tagger adds for the example pod).",
                f"Traffic, {REQUESTS_PER_STEP} requests a step: the cookie stops arriving in steps "
                f"{COOKIE_DROPPED.start + 1}-{COOKIE_DROPPED.stop} (a frontend release), the agent drops a third of "
                f"the requests in steps {AGENT_FAILING.start + 1}-{AGENT_FAILING.stop},",
                f"one malformed request in steps {', '.join(str(step + 1) for step in MALFORMED_AT)}. "
                "Drawn by tests/support/datadog_render.py.",
            ]
        ),
        ha="center",
        va="top",
        fontsize=12,
        color="#444",
        linespacing=1.5,
    )
    x = list(range(1, len(steps) + 1))  # step 0 of the traffic is check run 1
    for column, widget in enumerate(values[:2]):
        axes = figure.add_subplot(grid[0, column])
        (request,) = widget["requests"]
        ((_, number),) = scalar(request, steps).items()
        color = "#2e7d32"
        for rule in request.get("conditional_formats", []):
            hit = number < rule["value"] if rule["comparator"] == "<" else number >= rule["value"]
            if hit and "red" in rule["palette"]:
                color = "#c62828"
        text = f"{number:.{widget.get('precision', 0)}f}{widget.get('custom_unit', '')}"
        axes.text(0.5, 0.45, text, ha="center", va="center", fontsize=44, fontweight="bold", color=color)
        style(axes, widget["title"] + " (whole window)")
        axes.set_xticks([])
        axes.set_yticks([])
    slots = [(0, 2)] + [(row, column) for row in range(1, 4) for column in range(3)]
    for (row, column), widget in zip(slots, others, strict=False):
        axes = figure.add_subplot(grid[row, column])
        (request,) = widget["requests"]
        if widget["type"] == "toplist":
            ranked = sorted(scalar(request, steps).items(), key=lambda item: item[1])
            labels = ["\n".join(key) for key, _ in ranked]
            axes.barh(labels, [value for _, value in ranked], color=PALETTE[0], height=0.5)
            for i, (_, value) in enumerate(ranked):
                axes.text(value, i, f" {value:.0f}", va="center", fontsize=12)
            style(axes, widget["title"])
            continue
        plot_timeseries(axes, request, widget, widget_series(request, steps), x)
    if len(others) < len(slots):
        axes = figure.add_subplot(grid[slots[len(others)]])
        axes.axis("off")
        axes.text(
            0.0,
            0.95,
            textwrap.fill(
                "Request duration counts from the request's start to the end of its response, streams included: "
                "the streams held open for many steps are the p99 peaks (log scale). Requests in flight include the "
                "bridged WebSockets. 499: a client that left during its stream; 101: WebSockets. Monitors "
                "(deploy/datadog/monitors) watch coverage, agent errors per request and pods with no traffic.",
                60,
            ),
            va="top",
            fontsize=12,
            color="#444",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, facecolor=figure.get_facecolor())
    plt.close(figure)


def plot_timeseries(
    axes: Any, request: dict[str, Any], widget: dict[str, Any], lines: dict[str, list[float]], x: list[int]
) -> None:
    kind = request.get("display_type", "line")
    if kind == "bars":
        bottom = [0.0] * len(x)
        for i, (label, ys) in enumerate(sorted(lines.items())):
            ys = [0.0 if math.isnan(y) else y for y in ys]
            axes.bar(x, ys, bottom=bottom, label=label, color=PALETTE[i % len(PALETTE)], width=0.8)
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    elif kind == "area":
        labels = sorted(lines)
        stacks = [[0.0 if math.isnan(y) else y for y in lines[label]] for label in labels]
        axes.stackplot(x, stacks, labels=labels, colors=PALETTE[: len(labels)], alpha=0.85)
    else:
        for i, (label, ys) in enumerate(lines.items()):
            axes.plot(x, ys, label=label, color=PALETTE[i % len(PALETTE)], linewidth=2)
    yaxis = widget.get("yaxis", {})
    if yaxis.get("scale") == "log":
        axes.set_yscale("log")
        axes.set_ylabel("seconds")
    if "max" in yaxis:
        axes.set_ylim(float(yaxis.get("min", 0)), float(yaxis["max"]))
    axes.set_xlim(0.5, len(x) + 0.5)
    if lines:
        columns = 3 if max(len(label) for label in lines) < 16 else 1
        axes.legend(fontsize=9, loc="upper left", ncol=columns, framealpha=0.85)
    style(axes, widget["title"])
    axes.set_xlabel("check run (one step of traffic)", fontsize=9, color="#666")


def style(axes: Any, title: str) -> None:
    axes.set_title(textwrap.fill(title, 50), loc="left", fontsize=12, fontweight="bold", color="#222")
    axes.set_facecolor("white")
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.tick_params(labelsize=9, colors="#555")
    axes.grid(axis="y", color="#e6e6ee")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.datadog_render <out.png>", file=sys.stderr)
        return 2
    draw(steps_of(collect()), Path(argv[0]))
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
