"""WriteBatch: the sends of a loop turn leave together, then the work queued to follow them."""

from __future__ import annotations

import asyncio

from proxy.flow import WriteBatch


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
