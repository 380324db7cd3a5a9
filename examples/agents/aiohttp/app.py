"""Example agent: aiohttp server chat endpoint calling an OpenAI-compatible API inside an LLMObs workflow.

ddtrace-run does not instrument aiohttp servers; the hook reads the proxy header itself.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from ddtrace.llmobs import LLMObs
from ddtrace.llmobs.decorators import tool
from openai import AsyncOpenAI

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
SYSTEM = "You are a helpful shop assistant."
client = AsyncOpenAI()


@tool
async def lookup_faq(question: str) -> str:
    await asyncio.sleep(0)
    return "Shipping takes 3 days." if "ship" in question.lower() else "No FAQ entry."


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    message = body["message"]
    with LLMObs.workflow(name="chat"):
        faq = await asyncio.create_task(lookup_faq(message))  # a tool in its own asyncio task
        messages = [{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": message}]
        if not body.get("stream"):
            completion = await client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
            return web.json_response({"answer": completion.choices[0].message.content or ""})
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                await response.write(chunk.choices[0].delta.content.encode())
        await response.write_eof()
        return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/chat", chat)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8003")))
