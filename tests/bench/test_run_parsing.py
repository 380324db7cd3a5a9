"""bench/run.py's pure parts: reading wrk's summary, where the proxy found the ID, the request bodies it sends."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH_RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# wrk 4.1.0's output with the bench's done() line, as printed by a real run.
WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:40000/chat
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    13.45ms    6.01ms  62.10ms   80.12%
    Req/Sec     3.59k   301.22     3.90k    85.00%
  Latency Distribution
     50%   13.21ms
     75%   15.02ms
     90%   19.81ms
     99%   38.57ms
  7141 requests in 2.00s, 1.12MB read
Requests/sec:   3570.12
Transfer/sec:    574.21KB
WRK_JSON {"requests": 7141, "duration_us": 2000211, "p50_us": 13210.0, "p99_us": 38570.0, "connect": 0, "read": 0, \
"write": 0, "timeout": 0, "status": 0}
"""


def test_wrk_summary_is_read_from_the_done_line(run: ModuleType) -> None:
    result = run.parse_wrk(WRK_OUTPUT)
    assert result.requests == 7141
    assert result.rps == pytest.approx(3570.1, abs=0.1)
    assert (result.p50_ms, result.p99_ms) == (13.21, 38.57)
    assert result.errors == 0


def test_wrk_socket_errors_and_failed_answers_are_counted(run: ModuleType) -> None:
    failing = WRK_OUTPUT.replace('"read": 0', '"read": 3').replace('"status": 0', '"status": 12')
    assert run.parse_wrk(failing).errors == 15


def test_wrk_output_without_the_done_line_is_an_error(run: ModuleType) -> None:
    with pytest.raises(ValueError, match="no WRK_JSON line"):
        run.parse_wrk(WRK_OUTPUT.split("WRK_JSON")[0])


def test_wrk_script_prints_the_line_parse_wrk_reads(run: ModuleType, tmp_path: Path) -> None:
    cookie_load = next(load for load in run.LOADS if load.cookie)
    script = run.wrk_script(cookie_load, tmp_path / "body")
    assert 'wrk.headers["Cookie"] = "_dd_s_v2=aid=' in script
    assert f"&id={run.SESSION_ID}&created=" in script
    assert 'io.write(string.format("WRK_JSON {\\"requests\\": %d' in script


@pytest.mark.parametrize(
    ("before", "after", "requests", "expected"),
    [
        ({}, {"body": 1000.0}, 1000, "body"),
        ({"body": 10.0, "none": 5.0}, {"body": 10.0, "none": 1005.0}, 1000, "none"),
        ({}, {"body": 520.0}, 1000, "body 52%"),
        ({"body": 3.0}, {"body": 3.0}, 1000, None),
    ],
)
def test_where_the_session_id_was_found_is_the_biggest_counter_delta(
    run: ModuleType, before: dict[str, float], after: dict[str, float], requests: int, expected: str | None
) -> None:
    assert run.describe_sources(before, after, requests) == expected


def test_bodies_have_the_sizes_and_session_id_placement_the_report_names(run: ModuleType) -> None:
    assert len(run.BODY_300) == 300 and json.loads(run.BODY_300)["session_id"] == run.SESSION_ID
    big = json.loads(run.BODY_20K)
    assert len(run.BODY_20K) == 20 * 1024
    assert list(big)[-1] == "session_id" and big["session_id"] == run.SESSION_ID


def test_a_paired_ratio_is_taken_round_by_round(run: ModuleType) -> None:
    def result(rps: float) -> object:
        return run.Run(rps, 1.0, 2.0, 50.0, 60.0, 0, 1, "body", 0.0)

    # The VM slowed by half in round 2: both sides of the pair with it. Round by round the ratio stays 0.40; the
    # medians taken a round apart would have said otherwise had the slow spell hit only one side.
    proxy = [result(20_000), result(10_000), result(22_000)]
    nginx = [result(50_000), result(25_000), result(55_000)]
    ratio = run.paired(proxy, nginx, lambda a, b: a.rps / b.rps)
    assert (ratio.median, ratio.low, ratio.high) == pytest.approx((0.4, 0.4, 0.4))
    assert run.paired(proxy, nginx[:2], lambda a, b: a.rps / b.rps) is None  # unequal rounds: no pairing


def test_the_20k_loads_run_back_to_back_and_proxy_follows_nginx(run: ModuleType) -> None:
    keys = [load.key for load in run.LOADS]
    assert keys.index("text20k") == keys.index("json20k") + 1
    assert next(load for load in run.LOADS if load.key == "text20k").paired_with == "json20k"
    targets = list(run.TARGETS)
    assert targets.index("proxy") == targets.index("nginx") + 1
