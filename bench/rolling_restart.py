"""A rolling restart under continuous traffic, repeated: how many requests fail, and how.

Proxy A serves a port with SO_REUSEPORT; proxy B starts on the same port; A gets SIGTERM and drains; client
threads (fresh connections and keep-alive ones) send back-to-back GETs throughout. Each request ends as:
answered, refused (connect), reset/EOF before any response byte (a closing listener's accept queue, or an
idle keep-alive connection closed as the request was sent), or lost (a response that started and did not finish,
or a 5xx). Requests that reached the upstream and were not answered are counted separately.

Linux resets connections still in a closing listener's accept queue unless `net.ipv4.tcp_migrate_req=1`
(kernel >= 5.14), which moves them to another listener of the same SO_REUSEPORT group. To compare without
touching the host, run it in a private network namespace as root:

    unshare --net sh -c 'ip link set lo up; sysctl -qw net.ipv4.tcp_migrate_req=1; \
        .venv/bin/python bench/rolling_restart.py'
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hardening.proxyproc import start_proxy  # noqa: E402
from tests.hardening.traffic import Traffic, run_client, wait_for_answers  # noqa: E402
from tests.hardening.upstreams import LoopThread, RecordingUpstream  # noqa: E402
from tests.support.processes import free_port  # noqa: E402


def one_round(upstream: RecordingUpstream, clients: int) -> Counter[str]:
    upstream.reset()
    port = free_port()
    old = start_proxy(upstream.url, port=port, REUSE_PORT=True, SHUTDOWN_GRACE_SECONDS=5)
    new = None
    stop, traffic = threading.Event(), Traffic()
    workers = [
        threading.Thread(target=run_client, args=(port, f"{kind}{i}", kind == "ka", stop, traffic), daemon=True)
        for kind in ("fresh", "ka")
        for i in range(clients)
    ]
    try:
        for worker in workers:
            worker.start()
        wait_for_answers(traffic, 50)
        new = start_proxy(upstream.url, port=port, REUSE_PORT=True)
        wait_for_answers(traffic, traffic.total("answered") + 50)
        old.popen.send_signal(signal.SIGTERM)
        old.popen.wait(timeout=30)
        wait_for_answers(traffic, traffic.total("answered") + 100)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        for process in (old, new):
            if process is not None:
                process.stop()
    outcomes = Counter(traffic.outcomes)
    reached = {seen.target for seen in upstream.requests if seen.target.startswith("/rolling/")}
    outcomes["reached-upstream-but-unanswered"] = len(reached - traffic.answered)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2, help="client threads of each kind (fresh, keep-alive)")
    args = parser.parse_args()
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    loop = LoopThread()
    upstream = RecordingUpstream(loop).start()
    total: Counter[str] = Counter()
    try:
        for number in range(args.rounds):
            outcomes = one_round(upstream, args.clients)
            print(f"round {number + 1}: {dict(sorted(outcomes.items()))}", flush=True)
            total.update(outcomes)
    finally:
        upstream.close()
        loop.stop()
    print(f"net.ipv4.tcp_migrate_req={migrate}, {args.rounds} rounds: {dict(sorted(total.items()))}")
    failed = {key: count for key, count in total.items() if not key.endswith(":answered") and count}
    print("failed requests:", failed or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
