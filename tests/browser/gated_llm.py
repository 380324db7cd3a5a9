"""The fake LLM, plus a gate: a streamed answer to a message containing `[gate:<name>]` stops after its first
word until `POST /release/<name>`. The streaming test sees the first chunk in the page while the rest of the
answer does not exist yet, so "it arrived in pieces" is proven by events, not by timing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

FAKE_LLM = Path(__file__).resolve().parents[2] / "examples" / "fake_llm" / "server.py"
GATE = re.compile(r"\[gate:([a-z0-9-]+)\]")
GATES = web.AppKey("gates", dict[str, asyncio.Event])


def _load_fake_llm() -> Any:
    spec = importlib.util.spec_from_file_location("fake_llm_server", FAKE_LLM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fake_llm = _load_fake_llm()


def _gate(app: web.Application, name: str) -> asyncio.Event:
    return app[GATES].setdefault(name, asyncio.Event())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    answer = fake_llm.answer_for(body.get("messages") or [])
    match = GATE.search(answer)
    if not body.get("stream") or match is None:
        return await fake_llm.chat_completions(request)  # the body was cached by request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    base = {"id": "chatcmpl-gated", "object": "chat.completion.chunk", "created": 0, "model": fake_llm.MODEL}

    async def send(delta: dict[str, str], finish: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        await response.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())

    first, *rest = answer.split(" ")
    await send({"role": "assistant"})
    await send({"content": first + " "})
    await _gate(request.app, match.group(1)).wait()
    for word in rest:
        await send({"content": word + " "})
    await send({}, finish="stop")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def release(request: web.Request) -> web.Response:
    _gate(request.app, request.match_info["name"]).set()
    return web.Response(text="released")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app[GATES] = {}
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/release/{name}", release)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    web.run_app(create_app(), host="127.0.0.1", port=parser.parse_args().port, print=None)
