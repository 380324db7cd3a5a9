"""Continuous client traffic for restart tests and benchmarks: outcomes classified by how each request ended."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.hardening.rawhttp import GUARD, Connection, Ending, build_request


@dataclass
class Traffic:
    """Outcomes of a continuous stream of requests, by connection (fresh or reused) and by how each one ended."""

    outcomes: Counter[str] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, outcome: str, target: str | None = None) -> None:
        with self.lock:
            self.outcomes[f"{kind}:{outcome}"] += 1
            if target is not None:
                self.answered.add(target)

    def total(self, outcome: str) -> int:
        return sum(count for key, count in self.outcomes.items() if key.endswith(":" + outcome))


def run_client(port: int, name: str, keep_alive: bool, stop: threading.Event, traffic: Traffic) -> None:
    """Back-to-back GETs. A failure before any response byte is a refusal or a pre-accept/idle-close race;
    a response that started and did not finish, or a 5xx, is a request the proxy lost."""
    conn: Connection | None = None
    number = 0
    while not stop.is_set():
        number += 1
        target = f"/rolling/{name}/{number}"
        kind = "fresh" if conn is None else "reused"  # a new connection, or a keep-alive one used again
        try:
            if conn is None:
                conn = Connection(port, timeout=GUARD)
            conn.send(build_request("GET", target))
            response = conn.read_response()
        except ConnectionRefusedError:
            traffic.record(kind, "refused")
            conn = None
            continue
        except (ConnectionResetError, BrokenPipeError):
            traffic.record(kind, "reset-before-response")
            close_quietly(conn)
            conn = None
            continue
        if response.status is None:
            traffic.record(kind, "reset-before-response" if response.ending == Ending.RESET else "eof-before-response")
            close_quietly(conn)
            conn = None
        elif response.status == 200 and response.complete:
            traffic.record(kind, "answered", target)
            if not keep_alive or (response.header("connection") or "").lower() == "close":
                close_quietly(conn)
                conn = None
        else:
            traffic.record(kind, f"lost-{response.status}-{response.ending}")
            close_quietly(conn)
            conn = None
    close_quietly(conn)


def close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        conn.close()


def wait_for_answers(traffic: Traffic, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while traffic.total("answered") < count:
        assert time.monotonic() < deadline, f"traffic stalled: {dict(traffic.outcomes)}"
        time.sleep(0.01)  # bounded poll of the client threads' progress
