"""Example agent: FastAPI chat endpoint calling an OpenAI-compatible API inside an LLMObs workflow.

Unmodified with respect to RUM: it never reads a session ID. Run under ddtrace-run with the hook on
PYTHONPATH (see examples/agents/README.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

from anthropic import Anthropic
from ddtrace.llmobs import LLMObs
from ddtrace.llmobs.decorators import tool, workflow
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
ANTHROPIC_MODEL = os.environ.get("AGENT_ANTHROPIC_MODEL", "fake-claude")
SYSTEM = "You are a helpful shop assistant."

app = FastAPI()
client = OpenAI()
async_client = AsyncOpenAI()


class ChatRequest(BaseModel):
    message: str
    stream: bool = False


@tool
def lookup_faq(question: str) -> str:
    return "Shipping takes 3 days." if "ship" in question.lower() else "No FAQ entry."


@workflow(name="chat")
def answer(message: str) -> str:
    faq = lookup_faq(message)
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": message}],
    )
    text = completion.choices[0].message.content or ""
    LLMObs.annotate(input_data=message, output_data=text)
    return text


def stream_answer(message: str) -> Iterator[str]:
    with LLMObs.workflow(name="chat.stream"):
        faq = lookup_faq(message)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": message}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@app.post("/chat")
def chat(request: ChatRequest) -> object:
    """Sync endpoint: FastAPI runs it (and the streaming generator) in a worker thread."""
    if request.stream:
        return StreamingResponse(stream_answer(request.message), media_type="text/plain")
    return {"answer": answer(request.message)}


@tool(name="lookup_faq_async")
async def lookup_faq_async(question: str) -> str:
    await asyncio.sleep(0)
    return lookup_faq(question)


async def stream_answer_async(message: str) -> AsyncIterator[str]:
    with LLMObs.workflow(name="chat.async.stream"):
        faq = await asyncio.create_task(lookup_faq_async(message))
        stream = await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": message}],
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@app.post("/chat/async")
async def chat_async(request: ChatRequest) -> object:
    """Async endpoint: the tool runs in its own asyncio task."""
    if request.stream:
        return StreamingResponse(stream_answer_async(request.message), media_type="text/plain")
    with LLMObs.workflow(name="chat.async"):
        faq = await asyncio.create_task(lookup_faq_async(request.message))
        completion = await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": request.message}],
        )
        return {"answer": completion.choices[0].message.content or ""}


def stream_anthropic(message: str) -> Iterator[str]:
    with LLMObs.workflow(name="chat.anthropic.stream"):
        system = f"{SYSTEM} {lookup_faq(message)}"
        messages = [{"role": "user", "content": message}]
        with Anthropic().messages.stream(
            model=ANTHROPIC_MODEL, max_tokens=256, system=system, messages=messages
        ) as stream:  # type: ignore[arg-type]
            yield from stream.text_stream


@app.post("/chat/anthropic")
def chat_anthropic(request: ChatRequest) -> object:
    """Anthropic's Messages API (ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY), the provider of Datadog's guide."""
    if request.stream:
        return StreamingResponse(stream_anthropic(request.message), media_type="text/plain")
    with LLMObs.workflow(name="chat.anthropic"):
        system = f"{SYSTEM} {lookup_faq(request.message)}"
        reply = Anthropic().messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=256,
            system=system,
            messages=[{"role": "user", "content": request.message}],
        )
        return {"answer": "".join(block.text for block in reply.content if block.type == "text")}


class OwnSessionRequest(ChatRequest):
    conversation_id: str


@app.post("/chat/own-session")
def chat_own_session(request: OwnSessionRequest) -> object:
    """An application that names its sessions itself: its session_id wins over the RUM one."""
    with LLMObs.workflow(name="chat.own", session_id=request.conversation_id):
        return {"answer": answer(request.message)}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8001")))
