"""A deterministic LLM server for tests and demos: OpenAI-compatible chat completions and Anthropic Messages.

Both answer JSON, or Server-Sent Events with ``stream: true`` (OpenAI's ``data:`` chunks; Anthropic's named
events ``message_start``, ``content_block_start``, ``content_block_delta``, ``content_block_stop``,
``message_delta``, ``message_stop``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from typing import Any

from aiohttp import web

MODEL = "fake-gpt"
CHUNK_DELAY = web.AppKey("chunk_delay", float)


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The same question always gets the same answer."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"You said: {last}" if isinstance(last, str) else "You said something."


def completion_id(answer: str) -> str:
    """Deterministic too, so a test finds the spans of its own request by the response id they record."""
    return "chatcmpl-" + hashlib.sha256(answer.encode()).hexdigest()[:24]


def _usage(prompt: str, answer: str) -> dict[str, int]:
    p, c = len(prompt.split()), len(answer.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    messages = body.get("messages") or []
    answer = answer_for(messages)
    prompt = " ".join(str(m.get("content", "")) for m in messages)
    base = {"id": completion_id(answer), "created": int(time.time()), "model": body.get("model", MODEL)}
    if not body.get("stream"):
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": _usage(prompt, answer),
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}

    async def send(payload: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())

    await send({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    for word in answer.split(" "):
        if delay := request.app.get(CHUNK_DELAY, 0.0):
            await asyncio.sleep(delay)  # pace the stream like a real model (demo only)
        delta = {"content": word + " "}
        await send({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    await send({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        await send({**chunk, "choices": [], "usage": _usage(prompt, answer)})
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _text_of(content: Any) -> str:
    """An Anthropic message's content: a string, or a list of blocks whose text blocks count."""
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else []
    return " ".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    messages = [{"role": m.get("role"), "content": _text_of(m.get("content"))} for m in body.get("messages") or []]
    answer = answer_for(messages)
    prompt = " ".join([_text_of(body.get("system", "")), *(m["content"] for m in messages)])
    usage = _usage(prompt, answer)
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", MODEL),
        "stop_sequence": None,
    }
    if not body.get("stream"):
        return web.json_response(
            {
                **message,
                "content": [{"type": "text", "text": answer}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def send(event: str, payload: dict[str, Any]) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps({'type': event, **payload})}\n\n".encode())

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": 0},
    }
    await send("message_start", {"message": start})
    await send("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    for word in answer.split(" "):
        if delay := request.app.get(CHUNK_DELAY, 0.0):
            await asyncio.sleep(delay)  # pace the stream like a real model (demo only)
        await send("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word + " "}})
    await send("content_block_stop", {"index": 0})
    await send(
        "message_delta",
        {
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["completion_tokens"]},
        },
    )
    await send("message_stop", {})
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(chunk_delay: float = 0.0) -> web.Application:
    app = web.Application()
    app[CHUNK_DELAY] = chunk_delay
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed words")
    args = parser.parse_args()
    web.run_app(create_app(args.chunk_delay), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
