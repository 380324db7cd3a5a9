"""Flow state owned by a connection, the inspection budget, and WriteBatch: the sends of a loop turn leave together,
then the work queued to follow them."""

from __future__ import annotations

import asyncio

from proxy.flow import FlowControl, WriteBatch
from proxy.inspection import InspectBudget, Inspection


class Recorder:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events

    def flush(self) -> None:
        self.events.append(f"send {self.name}")


async def test_sends_wait_for_the_turn_then_run_before_the_work_queued_after_them() -> None:
    loop = asyncio.get_running_loop()
    events: list[str] = []
    batch = WriteBatch(loop)
    for name in ("a", "b"):  # two connections' read events in the same turn
        batch.depth += 1
        batch.dirty.append(Recorder(name, events))
        batch.after(lambda name=name: events.append(f"count {name}"))
        batch.end()
    assert events == []  # nothing is sent while the turn's callbacks run
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done
    assert events == ["send a", "send b", "count a", "count b"]


def fail() -> None:
    raise RuntimeError("a metrics backend that broke")


async def test_a_failing_callback_costs_the_others_nothing() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    counted: list[str] = []
    batch = WriteBatch(loop)
    batch.after(lambda: counted.append("first"))
    batch.after(fail)
    batch.after(lambda: counted.append("third"))
    batch.flush()
    assert counted == ["first", "third"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)


async def test_a_write_waits_behind_the_sends_still_pending_so_bytes_keep_their_order() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    events: list[str] = []
    writer, out = Recorder("a", events), []
    assert batch.queue(writer, out, b"now") is False and out == []  # no batch, nothing pending: sent at once
    batch.depth += 1
    assert batch.queue(writer, out, b"head") is True
    batch.end()
    assert batch.queue(writer, out, b"body") is True  # the batch ended, but "head" is not sent yet
    assert out == [b"head", b"body"] and batch.dirty == [writer]  # one send for the connection, in order


class Transport:
    """The transport calls FlowControl makes, recorded (a real transport's pause/resume are not observable)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def test_reading_resumes_only_when_the_last_reason_clears() -> None:
    transport = Transport()
    flow = FlowControl(transport)  # type: ignore[arg-type]
    flow.pause_reading("upstream")
    flow.pause_reading("pipeline")
    flow.pause_reading("upstream")
    flow.resume_reading("upstream")
    assert transport.calls == ["pause"] and flow.reading_paused_for("pipeline")
    flow.resume_reading("connect")  # a reason that never held changes nothing
    flow.resume_reading("pipeline")
    assert transport.calls == ["pause", "resume"] and not flow.reading_paused


def test_a_write_pause_is_state_of_the_connection_not_of_a_request() -> None:
    """uvloop signals pause_writing once per crossing of the high-water mark: the flag must still say so when the
    next exchange on the connection looks (issue 17 item 1), until resume_writing clears it."""
    flow = FlowControl(Transport())  # type: ignore[arg-type]
    flow.write_paused = True
    assert flow.write_paused  # nothing an exchange does clears it; only the connection's resume_writing


def test_resume_all_resumes_once() -> None:
    transport = Transport()
    flow = FlowControl(transport)  # type: ignore[arg-type]
    flow.resume_all()
    flow.pause_reading("a")
    flow.pause_reading("b")
    flow.resume_all()
    assert transport.calls == ["pause", "resume"] and not flow.reading_paused


def test_the_inspection_budget_is_shared_and_given_back() -> None:
    budget = InspectBudget(100)
    first = Inspection("json", budget, limit=80, deadline=0.0)
    second = Inspection("json", budget, limit=80, deadline=0.0)
    assert first.add(b"x" * 60) is None
    assert second.add(b"x" * 30) is None
    assert second.add(b"x" * 20) == "budget"  # 60 + 30 + 20 > 100: fail open, stream it
    assert first.add(b"x" * 30) == "too_large"  # 60 + 30 > 80, its own limit
    assert b"".join(first.take()) == b"x" * 60 and budget.held == 30
    second.take()
    assert budget.held == 0
