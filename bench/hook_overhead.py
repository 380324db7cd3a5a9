"""Cost of rum_llmobs_hook: LLMObs span creation with and without the hook, as a ratio measured in one run.

Each mode runs in its own fresh interpreter (the hook cannot be uninstalled), alternating A/B several
times; spans are created under a request-like root span carrying baggage ``session.id``, the way the
agent sees a proxied request. LLMObs runs agentless with a fake key and a dead intake URL so nothing
leaves the machine; the writer queue is what it is in production.

Run:  .venv/bin/python bench/hook_overhead.py [--requests 5000] [--rounds 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time, uuid
import ddtrace
from ddtrace.llmobs import LLMObs
from ddtrace.propagation.http import HTTPPropagator
from ddtrace.trace import tracer
if sys.argv[1] == "hook":
    import rum_llmobs_hook
    assert rum_llmobs_hook.install()
LLMObs.enable(ml_app="bench", agentless_enabled=True, api_key="x" * 32, site="localhost")
n = int(sys.argv[2])
def request(i):
    ctx = HTTPPropagator.extract({"baggage": f"session.id={uuid.uuid4()}", "x-rum-session-id": str(uuid.uuid4())})
    tracer.context_provider.activate(ctx)
    session_id = str(uuid.uuid4()) if sys.argv[1] == "guide" else None
    with tracer.trace("http.request", span_type="web"):
        with LLMObs.workflow(name="chat", session_id=session_id):
            with LLMObs.tool(name="lookup"):
                pass
            with LLMObs.llm(model_name="m", name="llm"):
                pass
for i in range(200):
    request(i)
start = time.perf_counter()
for i in range(n):
    request(i)
elapsed = time.perf_counter() - start
print(json.dumps({"us_per_request": elapsed / n * 1e6, "ddtrace": ddtrace.__version__}))
"""


def run(mode: str, requests: int) -> dict[str, float | str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "hook"),
        "DD_TRACE_ENABLED": "false",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_LLMOBS_AGENTLESS_ENABLED": "1",
        "_DD_LLMOBS_WRITER_INTERVAL": "3600",
    }
    out = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(requests)], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, float | str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _rounds(values: list[float]) -> list[float]:
    return [round(value, 1) for value in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per round (3 LLMObs spans each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS-hook.md")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"baseline": [], "guide": [], "hook": []}
    version = ""
    for _ in range(args.rounds):
        for mode in times:
            result = run(mode, args.requests)
            times[mode].append(float(result["us_per_request"]))
            version = str(result["ddtrace"])
    base, guide, hooked = (statistics.median(times[mode]) for mode in ("baseline", "guide", "hook"))
    lines = [
        f"ddtrace {version}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"{args.rounds} alternating rounds x {args.requests} requests (workflow + tool + llm span each)",
        f"baseline (no session):           median {base:.1f} us/request   rounds {_rounds(times['baseline'])}",
        f"guide (app passes session_id):   median {guide:.1f} us/request   rounds {_rounds(times['guide'])}",
        f"hook (session from the request): median {hooked:.1f} us/request   rounds {_rounds(times['hook'])}",
        f"ratio hook/guide:    {hooked / guide:.3f}  (+{hooked - guide:.1f} us per request, "
        f"+{(hooked - guide) / 3:.1f} us per LLMObs span)",
        f"ratio hook/baseline: {hooked / base:.3f}  (+{hooked - base:.1f} us per request; includes LLMObs's own "
        "work for a span that has a session)",
    ]
    print("\n".join(lines))
    if args.write:
        (REPO / "bench" / "RESULTS-hook.md").write_text(
            "# rum_llmobs_hook overhead\n\n"
            "LLMObs span creation under a request-like root span (baggage + proxy header extracted by\n"
            "`HTTPPropagator.extract`): without any session, with the session passed by the application\n"
            "(the Datadog guide's way), and with the hook taking it from the request. Each mode runs in a\n"
            "fresh interpreter, alternating rounds; figures are medians of one run. Ratios matter,\n"
            "absolute numbers depend on the machine.\n\n```\n" + "\n".join(lines) + "\n```\n\n"
            "What it means: the hook's cost is the difference to the guide's way, a few microseconds per\n"
            "request; a request that calls an LLM takes 100 ms or more, so the hook adds no latency that\n"
            "can be measured at the request level.\n\n"
            "Rerun: `.venv/bin/python bench/hook_overhead.py --write` (options: `--requests`, `--rounds`).\n"
        )


if __name__ == "__main__":
    main()
