"""rum-llmobs-proxy against nginx and a plain aiohttp proxy, in one run: throughput, latency, CPU, memory, streams.

Method (issue 9): wrk -t1 -c50 --latency against every target in turn, alternating rounds, medians with min/max;
the verdicts on ratios pair runs measured back to back (nginx next to the proxy, 20 KB JSON next to text/plain).
wrk and the upstream (nginx `return 200`) run on one CPU, the target under test on the other (`taskset`); without
taskset or a second CPU everything runs unpinned and the output says so. Then 1,000 server-sent-event streams are
held open through nginx, the aiohttp peer and the proxy, and their memory is read. All traffic stays on loopback.

Run:  .venv/bin/python bench/run.py [--rounds 3] [--duration 8] [--quick] [--only proxy] [--write]
Needs nginx and wrk (Debian: nginx-light wrk; `make bench` installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port  # noqa: E402  (never the same port twice, as the tests need)

BENCH = ROOT / "bench"
SESSION_ID = "3f8a2c1e-9b4d-4e6f-a1b2-c3d4e5f60718"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK_MARK = "WRK_JSON "

# Issue 9's targets, as ratios measured in this run.
MIN_THROUGHPUT = 0.33
AIM_THROUGHPUT = 0.5
MAX_INSPECTION_COST = 0.15
MAX_ADDED_P50 = 1.5
MAX_ADDED_P99 = 3.0
MAX_STREAMS_RSS_MB = 100.0


def exact_size(prefix: str, suffix: str, size: int) -> bytes:
    """``prefix + "x" * n + suffix`` encoded, with n chosen so the whole is ``size`` bytes."""
    head, tail = prefix.encode(), suffix.encode()
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size, len(body)
    return body


# The Datadog guide's chat request: 300 bytes of JSON carrying session_id.
BODY_300 = exact_size(f'{{"session_id": "{SESSION_ID}", "message": "', '"}', 300)
# A 20 KB chat request with its history, session_id last: the inspector has to read all of it to find the ID.
_TURN = 'Turn {}: some "quoted" words, a backslash \\, an é and a line break\n, like a chat history has.'
_HISTORY = json.dumps(
    [{"role": ("user", "assistant")[i % 2], "content": _TURN.format(i)} for i in range(200)], ensure_ascii=False
)
BODY_20K = exact_size(
    f'{{"messages": {_HISTORY[: 20 * 1024 - 200].rpartition("}, ")[0]}}}], "context": "',
    f'", "session_id": "{SESSION_ID}"}}',
    20 * 1024,
)


@dataclass(frozen=True)
class Load:
    key: str
    title: str
    method: str = "GET"
    path: str = "/chat"
    body: bytes = b""
    content_type: str | None = None
    cookie: bool = False
    connections: int = 50
    # Where the proxy should find the session ID (its metrics say where it did).
    expected_source: str = "body"
    # Measured on each target right after (or, every other round, right before) the load of this key, so that
    # the ratio of the two is taken over runs seconds apart, not a whole round apart.
    paired_with: str | None = None


LOADS = (
    Load("json300", "300 B JSON POST, session_id in the body", "POST", body=BODY_300, content_type="application/json"),
    Load(
        "json20k",
        "20 KB JSON POST, session_id the last field (inspected)",
        "POST",
        body=BODY_20K,
        content_type="application/json",
    ),
    Load(
        "text20k",
        "the same 20 KB as text/plain (not inspected)",
        "POST",
        body=BODY_20K,
        content_type="text/plain",
        expected_source="none",
        paired_with="json20k",
    ),
    Load("query", "GET, session_id in the query", path=f"/chat?session_id={SESSION_ID}", expected_source="query"),
    Load("cookie", "GET, only the RUM SDK's _dd_s_v2 cookie", cookie=True, expected_source="cookie"),
    Load(
        "latency",
        "one connection (-c1), 300 B JSON POST",
        "POST",
        body=BODY_300,
        content_type="application/json",
        connections=1,
    ),
)


def rum_cookie(now_ms: int) -> str:
    """The v7 SDK's session cookie as it looks mid-session: created now, expiring in 15 minutes."""
    return f"_dd_s_v2=aid={uuid.uuid4()}&id={SESSION_ID}&created={now_ms}&expire={now_ms + 15 * 60 * 1000}&c=0"


def wrk_script(load: Load, body_path: Path) -> str:
    """wrk's Lua: the request, and a done() that prints the summary as one JSON line (exact µs, no units)."""
    lines = [f'wrk.method = "{load.method}"']
    if load.body:
        lines.append(f'local f = assert(io.open("{body_path}", "rb")); wrk.body = f:read("*a"); f:close()')
    if load.content_type:
        lines.append(f'wrk.headers["Content-Type"] = "{load.content_type}"')
    if load.cookie:
        lines.append(f'wrk.headers["Cookie"] = "{rum_cookie(int(time.time() * 1000))}"')
    lines.append(
        "done = function(s, latency, requests)\n"
        f'  io.write(string.format("{WRK_MARK}'
        '{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %.1f, \\"p99_us\\": %.1f, '
        '\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"timeout\\": %d, \\"status\\": %d}\\n",\n'
        "    s.requests, s.duration, latency:percentile(50), latency:percentile(99),\n"
        "    s.errors.connect, s.errors.read, s.errors.write, s.errors.timeout, s.errors.status))\n"
        "end"
    )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def parse_wrk(output: str) -> WrkResult:
    """The JSON line our done() printed; socket errors and non-2xx/3xx answers are summed in ``errors``."""
    for line in output.splitlines():
        if line.startswith(WRK_MARK):
            s = json.loads(line[len(WRK_MARK) :])
            errors = s["connect"] + s["read"] + s["write"] + s["timeout"] + s["status"]
            return WrkResult(
                s["requests"], s["requests"] / s["duration_us"] * 1e6, s["p50_us"] / 1e3, s["p99_us"] / 1e3, errors
            )
    raise ValueError(f"no {WRK_MARK.strip()} line in wrk's output:\n{output}")


# --- processes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    """Which CPU the load side (wrk, upstreams) and the target under test run on, or why nothing is pinned."""

    load_cpu: int | None
    target_cpu: int | None
    note: str

    @classmethod
    def detect(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled:
            return cls(None, None, "unpinned (--no-pin)")
        if shutil.which("taskset") is None:
            return cls(None, None, "unpinned: taskset is missing (Debian: util-linux)")
        if len(cpus) < 2:
            return cls(None, None, f"unpinned: only {len(cpus)} CPU available")
        return cls(
            cpus[0],
            cpus[1],
            f"wrk, the upstreams and the trace sink on CPU {cpus[0]} (`taskset -c {cpus[0]}`); "
            f"the target under test on CPU {cpus[1]} (`taskset -c {cpus[1]}`)",
        )

    def load_side(self) -> list[str]:
        return [] if self.load_cpu is None else ["taskset", "-c", str(self.load_cpu)]

    def under_test(self) -> list[str]:
        return [] if self.target_cpu is None else ["taskset", "-c", str(self.target_cpu)]

    def both(self) -> list[str]:
        return [] if self.load_cpu is None else ["taskset", "-c", f"{self.load_cpu},{self.target_cpu}"]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


@contextlib.contextmanager
def running(
    name: str, argv: Sequence[str], ready_url: str, log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own process group, wait (bounded poll) until ``ready_url`` answers 200, stop it after."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        # stdout carries the proxy's one line per request: discarded, like a log shipper reading it would cost
        # the proxy nothing more than the write. stderr is kept to explain a failure.
        popen = subprocess.Popen(
            argv, env=dict(env or os.environ), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, cwd=ROOT
        )
    try:
        deadline = time.monotonic() + 60
        while http_status(ready_url) != 200:
            if popen.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} did not get ready at {ready_url} (exit {popen.poll()}):\n{tail}")
            time.sleep(0.05)  # poll interval of a bounded readiness loop
        yield popen
    finally:
        stop_group(popen)


def stop_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group ``popen`` leads (started with start_new_session); SIGKILL it after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (a multi-process target's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """utime + stime of the process tree (and of children it already reaped), from /proc/<pid>/stat."""
    ticks = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def memory_mb(root: int, key: str) -> float:
    """Sum over the process tree of a /proc/<pid>/status field: VmRSS now, VmHWM peak."""
    kb = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    kb += int(line.split()[1])
    return kb / 1024


def reset_peak_rss(root: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, `echo 5 > clear_refs`; needs to own the process)."""
    ok = True
    for pid in process_tree(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


# --- the upstream, the targets ---------------------------------------------------------------------------------

NGINX_COMMON = """
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/{name}.pid;
error_log {prefix}/{name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/{name}.body; proxy_temp_path {prefix}/{name}.proxy;
  fastcgi_temp_path {prefix}/{name}.fcgi; uwsgi_temp_path {prefix}/{name}.uwsgi; scgi_temp_path {prefix}/{name}.scgi;
  # Steady state: nobody closes a keep-alive connection during a run (nginx's default is 1000 requests).
  keepalive_requests 100000000; keepalive_timeout 600s;
{servers}
}}
"""

# The upstream every target forwards to, and a Datadog Agent stand-in that accepts (and drops) traces.
UPSTREAM_SERVERS = """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type application/json; return 200 '{{"answer": "ok"}}'; }}
  }}
  server {{
    listen 127.0.0.1:{agent_port};
    client_max_body_size 0;
    location ~ ^/v0\\.[45]/traces$ {{
      access_log {prefix}/agent.log;
      default_type application/json; return 200 '{{"rate_by_service": {{}}}}';
    }}
    location / {{ return 404; }}
  }}
"""

PROXY_SERVERS = """
  upstream backend {{ server {upstream}; keepalive 128; keepalive_requests 100000000; keepalive_timeout 600s; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off; proxy_read_timeout 1h;
    }}
  }}
"""


@dataclass
class Target:
    key: str
    title: str
    url: str
    pid: int
    placement: str
    command: str
    metrics_url: str | None = None
    # The CPU the target has to itself when pinned (None: unpinned or sharing one).
    cpu: int | None = None
    log: Path | None = None  # its stderr

    def state(self) -> str:
        """Whether the target still runs, and the end of its stderr: what explains a failed run."""
        try:
            alive = _stat_fields(self.pid)[0] not in ("Z", "X")
        except OSError:
            alive = False
        tail = self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""
        return f"{self.key} is {'running' if alive else 'NOT running'}; its stderr ends:\n{tail}"


@dataclass
class Bench:
    """Everything a run needs: where files go, the pinning, the upstream and how to start each kind of target."""

    tmp: Path
    pinning: Pinning
    stack: contextlib.ExitStack
    agent_url: str = ""
    commands: dict[str, str] = field(default_factory=dict)

    def nginx(self, name: str, servers: str, pin: list[str], **values: object) -> subprocess.Popen[bytes]:
        conf = self.tmp / f"{name}.conf"
        body = servers.format(prefix=self.tmp, **values)
        conf.write_text(NGINX_COMMON.format(prefix=self.tmp, name=name, servers=body))
        argv = [*pin, "nginx", "-p", str(self.tmp), "-c", str(conf), "-g", "daemon off;"]
        self.commands[name] = self.show(argv)
        ready = f"http://127.0.0.1:{values['port']}/healthz"
        return self.stack.enter_context(running(name, argv, ready, self.tmp))

    def show(self, argv: Sequence[str]) -> str:
        """A command line as a shell would take it, with the run's temporary directory as $TMP."""
        return shlex.join(argv).replace(str(self.tmp), "$TMP").replace(str(ROOT) + "/", "")

    def start_upstream(self) -> Target:
        port, agent_port = free_port(), free_port()
        self.agent_url = f"http://127.0.0.1:{agent_port}"
        popen = self.nginx("upstream", UPSTREAM_SERVERS, self.pinning.load_side(), port=port, agent_port=agent_port)
        url = f"http://127.0.0.1:{port}"
        title = "direct to the upstream (nginx `return 200`)"
        return Target("direct", title, url, popen.pid, self._load_cpu(), "", log=self.tmp / "upstream.error.log")

    def start_sse_upstream(self) -> str:
        port = free_port()
        argv = [*self.pinning.load_side(), sys.executable, str(BENCH / "sse_upstream.py"), "--port", str(port)]
        self.commands["sse-upstream"] = self.show(argv)
        self.stack.enter_context(running("sse-upstream", argv, f"http://127.0.0.1:{port}/healthz", self.tmp))
        return f"http://127.0.0.1:{port}"

    def _load_cpu(self) -> str:
        return "unpinned" if self.pinning.load_cpu is None else f"CPU {self.pinning.load_cpu} (with wrk)"

    def _target_cpu(self) -> str:
        return "unpinned" if self.pinning.target_cpu is None else f"CPU {self.pinning.target_cpu}"

    def start(self, key: str, upstream: str, name: str | None = None) -> Target:
        """Start target ``key`` (a key of TARGETS) in front of ``upstream``."""
        name = name or key
        title, extra_env = TARGETS[key]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        pin, placement, cpu = self.pinning.under_test(), self._target_cpu(), self.pinning.target_cpu
        if key == "nginx":
            popen = self.nginx(name, PROXY_SERVERS, pin, port=port, upstream=upstream.removeprefix("http://"))
            log = self.tmp / f"{name}.error.log"
            return Target(key, title, url, popen.pid, placement, self.commands[name], cpu=cpu, log=log)
        if key == "aiohttp":
            argv = [*pin, sys.executable, str(BENCH / "aiohttp_peer.py"), "--port", str(port), "--upstream", upstream]
            popen = self.stack.enter_context(running(name, argv, url + "/healthz", self.tmp))
            self.commands[name] = self.show(argv)
            log = self.tmp / f"{name}.log"
            return Target(key, title, url, popen.pid, placement, self.commands[name], cpu=cpu, log=log)
        admin = free_port()
        env = {
            "RUM_PROXY_UPSTREAM_URL": upstream,
            "RUM_PROXY_HOST": "127.0.0.1",
            "RUM_PROXY_PORT": str(port),
            "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
            "RUM_PROXY_ADMIN_PORT": str(admin),
            "RUM_PROXY_LOG_FORMAT": "json",
            "RUM_PROXY_SHUTDOWN_GRACE_SECONDS": "2",
            "DD_TRACE_AGENT_URL": self.agent_url,
            **extra_env,
        }
        if key == "proxy-2w":
            pin = self.pinning.both()
            placement = "unpinned" if not pin else f"CPUs {self.pinning.load_cpu},{self.pinning.target_cpu} (shared)"
            cpu = None
        # Defaults means defaults: none of the bench's own RUM_PROXY_*/DD_* variables leak in.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUM_PROXY_", "DD_"))}
        argv = [*pin, sys.executable, "-m", "proxy"]
        popen = self.stack.enter_context(
            running(name, argv, f"http://127.0.0.1:{admin}/readyz", self.tmp, env={**clean, **env})
        )
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k not in ("RUM_PROXY_HOST", "RUM_PROXY_ADMIN_HOST"))
        self.commands[name] = f"{shown} {self.show(argv)}"
        metrics = f"http://127.0.0.1:{admin}/metrics"
        return Target(
            key, title, url, popen.pid, placement, self.commands[name], metrics, cpu, self.tmp / f"{name}.log"
        )


# key -> (what it is, extra environment for the proxy)
TARGETS: dict[str, tuple[str, dict[str, str]]] = {
    # In this order in a round (reversed in every other one): each ratio's two sides are measured next to each
    # other, so a slow spell of the VM weighs on both (direct–nginx for the added latency, nginx–proxy).
    "nginx": ("nginx as reverse proxy (keep-alive pool, proxy_buffering off)", {}),
    "proxy": ("rum-llmobs-proxy, defaults (trace context rewritten, no span of its own)", {}),
    "aiohttp": ("a straightforward aiohttp proxy (bench/aiohttp_peer.py)", {}),
    "proxy-notrace": (
        "rum-llmobs-proxy, DD_TRACE_ENABLED=false (changes nothing without the APM span: a control)",
        {"DD_TRACE_ENABLED": "false"},
    ),
    "proxy-span": ("rum-llmobs-proxy, its own APM span on (RUM_PROXY_APM_SPAN=true)", {"RUM_PROXY_APM_SPAN": "true"}),
    "proxy-2w": ("rum-llmobs-proxy, defaults, RUM_PROXY_WORKERS=2", {"RUM_PROXY_WORKERS": "2"}),
}


# --- measuring -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    peak_rss_mb: float
    errors: int
    processes: int
    found_in: str | None
    # Share of the run's wall time the target's CPU spent on anything but the target (None: not pinned alone).
    others: float | None


def busy_seconds(cpu: int) -> float:
    """user + nice + system + steal time of one CPU so far, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(x) for x in line.split()[1:9]]
            return (ticks[0] + ticks[1] + ticks[2] + ticks[7]) / CLOCK_TICKS
    raise ValueError(f"cpu{cpu} not in /proc/stat")


def session_sources(metrics_url: str | None) -> dict[str, float]:
    """rum_proxy_requests_total summed by session_source, from the proxy's /metrics (empty if unavailable)."""
    if metrics_url is None:
        return {}
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rum_proxy_requests_total":
                source = sample.labels.get("session_source", "?")
                counts[source] = counts.get(source, 0.0) + sample.value
    return counts


def describe_sources(before: dict[str, float], after: dict[str, float], requests: int) -> str | None:
    """Where the proxy found the session ID during one run, e.g. ``body`` (or ``body 52%`` if not all counted)."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    delta = {k: v for k, v in delta.items() if v > 0}
    if not delta:
        return None
    source, count = max(delta.items(), key=lambda item: item[1])
    share = count / max(requests, 1)
    return source if share >= 0.99 else f"{source} {share:.0%}"


def run_wrk(argv: list[str], duration: int, what: str, target: Target) -> str:
    """wrk's stdout; a failed wrk is reported and retried once."""

    def attempt() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)

    done = attempt()
    if done.returncode != 0:
        print(f"  {what}: wrk exited {done.returncode}: {done.stderr.strip()}; {target.state()}", file=sys.stderr)
        print("  retrying once", file=sys.stderr)
        done = attempt()
    if done.returncode != 0:
        raise RuntimeError(f"{what}: wrk exited {done.returncode}:\n{done.stdout}{done.stderr}{target.state()}")
    return done.stdout


def measure(bench: Bench, target: Target, load: Load, duration: int, record: bool = True) -> Run:
    body_path = bench.tmp / f"{load.key}.body"
    body_path.write_bytes(load.body)
    script = bench.tmp / f"{load.key}.lua"
    script.write_text(wrk_script(load, body_path))  # rendered per run: the cookie's times are fresh
    path = load.path
    argv = [
        *bench.pinning.load_side(),
        "wrk", "-t1", f"-c{load.connections}", f"-d{duration}s", "--latency", "-s", str(script), target.url + path,
    ]  # fmt: skip
    before = session_sources(target.metrics_url) if record else {}
    reset_peak_rss(target.pid)
    cpu_before = cpu_seconds(target.pid)
    busy_before = busy_seconds(target.cpu) if target.cpu is not None else 0.0
    started = time.monotonic()
    out = run_wrk(argv, duration, f"{target.key}, {load.key}", target)
    cpu = cpu_seconds(target.pid) - cpu_before
    others = None
    if target.cpu is not None:
        others = max(0.0, busy_seconds(target.cpu) - busy_before - cpu) / (time.monotonic() - started)
    result = parse_wrk(out)
    if result.requests == 0:
        raise RuntimeError(f"{target.key} answered no request under {load.key}:\n{out}")
    found = describe_sources(before, session_sources(target.metrics_url), result.requests) if record else None
    return Run(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us=cpu / result.requests * 1e6,
        peak_rss_mb=memory_mb(target.pid, "VmHWM"),
        errors=result.errors,
        processes=len(process_tree(target.pid)),
        found_in=found,
        others=others,
    )


@dataclass(frozen=True)
class Summary:
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    peak_rss_mb: float
    errors: int
    processes: int
    found_in: str | None
    others_max: float | None

    @classmethod
    def of(cls, runs: list[Run]) -> Summary:
        med = statistics.median
        return cls(
            rps=med(r.rps for r in runs),
            rps_min=min(r.rps for r in runs),
            rps_max=max(r.rps for r in runs),
            p50_ms=med(r.p50_ms for r in runs),
            p99_ms=med(r.p99_ms for r in runs),
            cpu_us=med(r.cpu_us for r in runs),
            peak_rss_mb=max(r.peak_rss_mb for r in runs),
            errors=sum(r.errors for r in runs),
            processes=max(r.processes for r in runs),
            found_in=runs[-1].found_in,
            others_max=max((r.others for r in runs if r.others is not None), default=None),
        )


# --- SSE streams -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamsResult:
    title: str
    idle_rss_mb: float
    streams_rss_mb: float
    opened: int
    events: int
    placement: str


async def hold_streams(
    url: str, count: int, hold_seconds: float, during: Callable[[], float]
) -> tuple[int, int, float]:
    """Open ``count`` SSE streams to ``url``, wait until each got an event, hold them, call ``during`` meanwhile.

    Returns (streams that got an event, events received in total, what ``during`` returned).
    """
    host, _, port = url.removeprefix("http://").partition(":")
    events = [0] * count
    first = [asyncio.Event() for _ in range(count)]
    opening = asyncio.Semaphore(50)  # opened 50 at a time: the listen backlogs are not what is measured
    request = (
        f"GET /events?session_id={SESSION_ID} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    )

    async def stream(i: int) -> None:
        async with opening:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request.encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream {i}: {head[:200]!r}")
            while chunk := await reader.read(65536):
                events[i] += chunk.count(b"data:")
                first[i].set()
        finally:
            writer.close()

    tasks = [asyncio.create_task(stream(i)) for i in range(count)]
    waiting = asyncio.ensure_future(asyncio.gather(*(event.wait() for event in first)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    try:
        pending: set[asyncio.Future[Any]] = {waiting, *tasks}
        while not waiting.done():
            done, pending = await asyncio.wait(pending, timeout=deadline - loop.time(), return_when="FIRST_COMPLETED")
            if not done:
                raise RuntimeError(f"{sum(1 for e in events if e == 0)} of {count} streams got no event in 120 s")
            for task in done:
                if task is not waiting:
                    raise RuntimeError(f"a stream ended before the measurement: {task.exception()!r}")
        await asyncio.sleep(hold_seconds)  # the streams' shape: held open while events flow
        measured = during()
        return sum(1 for e in events if e > 0), sum(events), measured
    finally:
        waiting.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(waiting, *tasks, return_exceptions=True)


def measure_streams(bench: Bench, key: str, upstream: str, count: int, hold: float) -> StreamsResult:
    with contextlib.ExitStack() as stack:
        inner = Bench(bench.tmp, bench.pinning, stack, bench.agent_url, bench.commands)
        target = inner.start(key, upstream, name=f"{key}-sse")
        time.sleep(1)  # let a fresh process settle before its idle RSS is read
        idle = memory_mb(target.pid, "VmRSS")
        opened, events, rss = asyncio.run(hold_streams(target.url, count, hold, lambda: memory_mb(target.pid, "VmRSS")))
        return StreamsResult(target.title, idle, rss, opened, events, target.placement)


# --- report ----------------------------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def load_table(load: Load, targets: list[Target], results: dict[tuple[str, str], Summary]) -> list[str]:
    direct, nginx = results.get(("direct", load.key)), results.get(("nginx", load.key))
    lines = [
        f"### {load.title}",
        "",
        "| target | req/s | min–max | × nginx | p50 ms | p99 ms | added p50 / p99 ms | CPU µs/req | peak RSS MB "
        "| ID found in | others on its CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for target in targets:
        s = results.get((target.key, load.key))
        if s is None:
            continue
        ratio = f"{s.rps / nginx.rps:.3f}" if nginx and target.key != "direct" else ""
        added = (
            f"{fmt_ms(s.p50_ms - direct.p50_ms)} / {fmt_ms(s.p99_ms - direct.p99_ms)}"
            if direct and target.key != "direct"
            else ""
        )
        several = s.processes > 1 and target.key.startswith("proxy")
        name = target.key + (f" ({s.processes} processes)" if several else "")
        note = f" ⚠ {s.errors} errors" if s.errors else ""
        lines.append(
            f"| {name}{note} | {s.rps:,.0f} | {s.rps_min:,.0f}–{s.rps_max:,.0f} | {ratio} | {fmt_ms(s.p50_ms)} "
            f"| {fmt_ms(s.p99_ms)} | {added} | {s.cpu_us:.1f} | {s.peak_rss_mb:.0f} | {s.found_in or ''} "
            f"| {'' if s.others_max is None else f'{s.others_max:.0%}'} |"
        )
    return [*lines, ""]


@dataclass(frozen=True)
class Paired:
    """A ratio taken round by round between two runs measured back to back: median, min and max over rounds."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Paired:
        return cls(statistics.median(values), min(values), max(values))

    def range(self, fmt: str) -> str:
        return f"{format(self.low, fmt)} to {format(self.high, fmt)}"


def paired(first: Sequence[Run], second: Sequence[Run], ratio: Callable[[Run, Run], float]) -> Paired | None:
    """`ratio` of each round's two runs (the i-th of each list: measured next to each other), or None if unpaired."""
    if not first or len(first) != len(second):
        return None
    return Paired.of([ratio(a, b) for a, b in zip(first, second, strict=True)])


def checks(
    results: dict[tuple[str, str], Summary],
    runs: Mapping[tuple[str, str], Sequence[Run]],
    streams: list[StreamsResult],
    stream_count: int,
) -> list[str]:
    """One PASS/FAIL line per target of issue 9 (SKIP when this run did not measure it).

    Throughput and inspection cost are judged on the round-by-round ratio of two runs measured back to back
    (median over rounds): on a VM whose speed drifts by tens of percent over a minute, the ratio of two medians
    taken a whole round apart can move more than the effect measured. The ratio of the medians is shown too.
    """

    def get(target: str, load: str) -> Summary | None:
        return results.get((target, load))

    lines = []
    proxy, nginx = get("proxy", "json300"), get("nginx", "json300")
    if proxy and nginx:
        by_round = paired(runs[("proxy", "json300")], runs[("nginx", "json300")], lambda a, b: a.rps / b.rps)
        ratio = by_round.median if by_round else proxy.rps / nginx.rps
        aim = "aim reached" if ratio >= AIM_THROUGHPUT else f"aim {AIM_THROUGHPUT}× not reached"
        spread = f"rounds {by_round.range('.3f')}; " if by_round else ""
        lines.append(
            f"{'PASS' if ratio >= MIN_THROUGHPUT else 'FAIL'}  throughput, 300 B JSON, defaults: {ratio:.3f}× nginx "
            f"({spread}medians {proxy.rps:,.0f} vs {nginx.rps:,.0f} req/s = {proxy.rps / nginx.rps:.3f}×; "
            f"target ≥ {MIN_THROUGHPUT}×, {aim})"
        )
        # CPU per request is what a busy machine disturbs least: another process on the target's CPU lowers its
        # req/s, not the CPU each request takes.
        lines.append(
            f"INFO  CPU per request, 300 B JSON: proxy {proxy.cpu_us:.1f} µs, nginx {nginx.cpu_us:.1f} µs "
            f"(nginx ÷ proxy = {nginx.cpu_us / proxy.cpu_us:.3f})"
        )
    else:
        lines.append("SKIP  throughput, 300 B JSON (proxy or nginx not measured)")
    inspected, plain = get("proxy", "json20k"), get("proxy", "text20k")
    if inspected and plain:
        by_round = paired(runs[("proxy", "json20k")], runs[("proxy", "text20k")], lambda a, b: 1 - a.rps / b.rps)
        cost = by_round.median if by_round else 1 - inspected.rps / plain.rps
        spread = f"rounds {by_round.range('+.1%')}; " if by_round else ""
        lines.append(
            f"{'PASS' if cost <= MAX_INSPECTION_COST else 'FAIL'}  inspecting 20 KB JSON vs text/plain, defaults: "
            f"{cost:+.1%} throughput cost ({spread}medians {inspected.rps:,.0f} vs {plain.rps:,.0f} req/s = "
            f"{1 - inspected.rps / plain.rps:+.1%}; target ≤ {MAX_INSPECTION_COST:.0%})"
        )
        lines.append(
            f"INFO  inspecting 20 KB JSON in CPU per request: {inspected.cpu_us:.1f} vs {plain.cpu_us:.1f} µs "
            f"({inspected.cpu_us / plain.cpu_us - 1:+.1%})"
        )
    else:
        lines.append("SKIP  inspection cost (json20k or text20k not measured)")
    direct, nginx_1, proxy_1 = get("direct", "latency"), get("nginx", "latency"), get("proxy", "latency")
    if direct and nginx_1 and proxy_1:
        for pct, limit in (("p50", MAX_ADDED_P50), ("p99", MAX_ADDED_P99)):
            base = getattr(direct, f"{pct}_ms")
            ours, theirs = getattr(proxy_1, f"{pct}_ms") - base, getattr(nginx_1, f"{pct}_ms") - base
            if theirs <= 0:
                lines.append(
                    f"SKIP  added latency {pct} at one connection: nginx added {theirs:.3f} ms (noise), no ratio"
                )
                continue
            ratio = ours / theirs
            lines.append(
                f"{'PASS' if ratio <= limit else 'FAIL'}  added latency {pct} at one connection, defaults: "
                f"{ours:.3f} ms = {ratio:.2f}× nginx's {theirs:.3f} ms (target ≤ {limit}×)"
            )
    else:
        lines.append("SKIP  added latency at one connection (direct, nginx or proxy not measured)")
    ours_streams = [s for s in streams if s.title == TARGETS["proxy"][0]]
    if ours_streams:
        s = ours_streams[0]
        ok = s.streams_rss_mb <= MAX_STREAMS_RSS_MB and s.opened == stream_count
        lines.append(
            f"{'PASS' if ok else 'FAIL'}  {stream_count:,} SSE streams held open, defaults: "
            f"RSS {s.streams_rss_mb:.0f} MB ({s.opened:,} streams flowing; target ≤ {MAX_STREAMS_RSS_MB:.0f} MB)"
        )
    else:
        lines.append("SKIP  SSE streams (not measured)")
    one, two = get("proxy", "json300"), get("proxy-2w", "json300")
    if one and two:
        lines.append(
            f"INFO  RUM_PROXY_WORKERS=2 (300 B JSON): {two.rps / one.rps:.2f}× one process "
            f"({two.rps:,.0f} vs {one.rps:,.0f} req/s; {two.processes} process(es) seen)"
        )
    return lines


def machine() -> list[str]:
    """The lines that say what ran: CPUs, kernel, versions, the load average (call it before pinning)."""

    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "missing"
        return ((done.stdout + done.stderr).strip().splitlines() or ["?"])[0].partition(" Copyright")[0]

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("aiohttp", "ddtrace", "structlog", "rum-llmobs-proxy"))
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    core = first_line([sys.executable, "-m", "proxy", "--version"])
    return [
        f"- CPUs: {os.cpu_count()} (`nproc`: {len(os.sched_getaffinity(0))}), {cpu}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- kernel {platform.release()}, Python {platform.python_version()}, {first_line(['nginx', '-v'])}, "
        f"{first_line(['wrk', '-v'])}",
        f"- {versions}; commit {commit}; `{core}`",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (8)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s runs, streams held 2 s")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"targets to run, of {', '.join(TARGETS)} (repeat or comma-separate; direct and nginx always run: "
        "every ratio needs them)",
    )
    parser.add_argument(
        "--loads",
        action="append",
        default=[],
        metavar="NAME",
        help=f"loads to run, of {', '.join(x.key for x in LOADS)}",
    )
    parser.add_argument("--streams", type=int, default=1000, help="SSE streams to hold open; 0 skips (1000)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the streams are held before RSS is read (5)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.hold = 1, 2, 2.0

    def names(values: list[str], known: Sequence[str], what: str) -> list[str]:
        wanted = {name.strip() for value in values for name in value.split(",") if name.strip()}
        if unknown := wanted - set(known):
            parser.error(f"unknown {what} {', '.join(sorted(unknown))}; known: {', '.join(known)}")
        return [name for name in known if not wanted or name in wanted]

    args.targets = [k for k in names(args.only, list(TARGETS), "target") if k != "nginx"]
    args.targets.insert(0, "nginx")
    args.loads = [load for load in LOADS if load.key in names(args.loads, [x.key for x in LOADS], "load")]
    return args


@dataclass
class Measured:
    targets: list[Target]
    results: dict[tuple[str, str], Summary]
    runs: dict[tuple[str, str], list[Run]]
    streams: list[StreamsResult]
    traces_accepted: int
    commands: dict[str, str]


def measure_all(args: argparse.Namespace, pinning: Pinning) -> Measured:
    """Start the upstream and every target, run the rounds, then the streams; stop everything."""
    runs: dict[tuple[str, str], list[Run]] = {}
    streams: list[StreamsResult] = []
    with tempfile.TemporaryDirectory(prefix="rum-bench-") as tmp, contextlib.ExitStack() as stack:
        bench = Bench(Path(tmp), pinning, stack)
        direct = bench.start_upstream()
        targets = [direct, *(bench.start(key, direct.url) for key in args.targets)]
        for target in targets[1:]:  # warm up: pools filled, first-request paths taken
            measure(bench, target, LOADS[0], 1, record=False)
        groups: list[list[Load]] = []
        for load in args.loads:
            if groups and load.paired_with == groups[-1][-1].key:
                groups[-1].append(load)
            else:
                groups.append([load])
        for round_ in range(1, args.rounds + 1):
            forward = round_ % 2 == 1  # every other round runs backwards: neither side of a pair always goes first
            for group in groups:
                for target in targets if forward else targets[::-1]:
                    for load in group if forward else group[::-1]:
                        run = measure(bench, target, load, args.duration)
                        runs.setdefault((target.key, load.key), []).append(run)
                        print(
                            f"  round {round_}/{args.rounds} {load.key:8} {target.key:14} {run.rps:>10,.0f} req/s  "
                            f"p50 {fmt_ms(run.p50_ms)} ms  p99 {fmt_ms(run.p99_ms)} ms  {run.cpu_us:.1f} µs CPU/req"
                            + ("" if run.others is None else f"  others on its CPU {run.others:.0%}")
                            + (f"  ⚠ {run.errors} errors" if run.errors else ""),
                            file=sys.stderr,
                        )
        agent_log = Path(tmp) / "agent.log"
        traces_accepted = len(agent_log.read_text().splitlines()) if agent_log.exists() else 0
        if args.streams:
            sse = bench.start_sse_upstream()
            for key in ("nginx", "aiohttp", "proxy"):
                if key in args.targets:
                    streams.append(measure_streams(bench, key, sse, args.streams, args.hold))
                    print(f"  {args.streams} streams  {key:14} {streams[-1].streams_rss_mb:.0f} MB", file=sys.stderr)
        commands = dict(bench.commands)
    results = {key: Summary.of(value) for key, value in runs.items()}
    return Measured(targets, results, runs, streams, traces_accepted, commands)


def render(args: argparse.Namespace, pinning: Pinning, header: list[str], measured: Measured) -> str:
    out = [
        "# Proxy benchmark",
        "",
        *header,
        f"- pinning: {pinning.note}",
        f"- load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        f"Method: `wrk -t1 -c50 -d{args.duration}s --latency` (`-c1` for the one-connection run) against each "
        "target in turn, every other round in reverse order, nginx and the proxy next to each other, the 20 KB JSON "
        "and text/plain runs back to back on each target; upstream nginx `return 200`, keep-alive. The throughput "
        "and inspection verdicts take the ratio of those neighbouring runs round by round (median over rounds); "
        "the tables show medians with min–max. *added* = latency minus "
        "direct's (medians). *CPU µs/req* = utime+stime of the target's processes over the run ÷ requests. *peak "
        "RSS* = VmHWM summed over its processes (reset before each run). *ID found in* = where the proxy's "
        "`rum_proxy_requests_total{session_source}` says it found the session ID. *others on its CPU* = the largest "
        "share of a run's wall time the target's CPU spent on anything else (other processes, hypervisor steal; "
        "from /proc/stat): near 0 % on a quiet machine; above a few % its req/s and latency are disturbed.",
        "",
        "## Targets (issue 9)",
        "",
        "```",
        *checks(measured.results, measured.runs, measured.streams, args.streams),
        "```",
        "",
        "## Throughput and latency",
        "",
        "| target | what it is | runs on |",
        "|---|---|---|",
        *(f"| {t.key} | {t.title} | {t.placement} |" for t in measured.targets),
        "",
    ]
    for load in args.loads:
        out += load_table(load, measured.targets, measured.results)
    out += [
        f"The trace sink (nginx answering `/v0.4/traces` and `/v0.5/traces` 200) accepted {measured.traces_accepted} "
        "trace payloads from the tracing targets.",
        "",
    ]
    if measured.streams:
        out += [
            f"## {args.streams:,} SSE streams held open",
            "",
            f"An asyncio client opens {args.streams:,} `GET /events` streams through each target (a fresh process) "
            "to an aiohttp SSE upstream sending one event a second, waits until every stream got one, holds them "
            f"{args.hold:.0f} s and reads the target's RSS (VmRSS, summed over its processes).",
            "",
            "| target | runs on | RSS idle MB | RSS with streams MB | KB per stream | streams flowing | events |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for s in measured.streams:
            per = (s.streams_rss_mb - s.idle_rss_mb) * 1024 / max(s.opened, 1)
            out.append(
                f"| {s.title} | {s.placement} | {s.idle_rss_mb:.0f} | {s.streams_rss_mb:.0f} | {per:.1f} "
                f"| {s.opened:,} | {s.events:,} |"
            )
        out.append("")
    wrk_line = shlex.join([*pinning.load_side(), "wrk", "-t1", "-c50", f"-d{args.duration}s", "--latency"])
    out += [
        "## Commands",
        "",
        "```",
        *measured.commands.values(),
        f"{wrk_line} -s $TMP/<load>.lua http://127.0.0.1:<target port>/chat   # -c1 for the one-connection run",
        "```",
        "",
        "The nginx configurations are `NGINX_COMMON`, `UPSTREAM_SERVERS` and `PROXY_SERVERS` in bench/run.py; the "
        "wrk Lua script is `wrk_script()` there.",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    args = parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (Debian: apt-get install -y nginx-light wrk, or `make bench`)")
    # 1,000 streams need ~2,000 descriptors in a proxy and 1,000 here; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    pinning = Pinning.detect(enabled=not args.no_pin)
    header = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`{shlex.join(['python', 'bench/run.py', *sys.argv[1:]])}` ({args.rounds} round(s) × {args.duration} s "
        "per run; medians, req/s with min–max).",
        "",
        *machine(),
    ]
    if pinning.load_cpu is not None:
        os.sched_setaffinity(0, {pinning.load_cpu})  # this process (the streams' client) is load side too
    runs_total = args.rounds * len(args.loads) * (len(args.targets) + 1)
    print(
        f"bench: {runs_total} wrk runs of {args.duration} s (≈{runs_total * (args.duration + 1) / 60:.0f} min) "
        f"+ {args.streams} SSE streams; pinning: {pinning.note}",
        file=sys.stderr,
    )
    report = render(args, pinning, header, measure_all(args, pinning))
    print(report)
    if args.write:
        (BENCH / "RESULTS.md").write_text(report)
        print("bench: wrote bench/RESULTS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
