"""Example agent: FastAPI calling an OpenAI-compatible API, traced by OpenTelemetry alone (no ddtrace).

No OpenTelemetry code and no session code: run it under ``opentelemetry-instrument`` (the FastAPI instrumentation and
OpenInference's or the GenAI openai instrumentation, OTLP/HTTP export) with ``rum-otel-session`` installed, and the
session the proxy forwards in baggage lands on every span. See README.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import OpenAI
from pydantic import BaseModel

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
SYSTEM = "You are a helpful shop assistant. Shipping takes 3 days."

app = FastAPI()
client = OpenAI()


class ChatRequest(BaseModel):
    message: str
    stream: bool = False


def messages_for(message: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}]


def stream_answer(message: str) -> Iterator[str]:
    stream = client.chat.completions.create(model=MODEL, messages=messages_for(message), stream=True)  # type: ignore[arg-type]
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


@app.post("/chat")
def chat(request: ChatRequest) -> object:
    if request.stream:
        return StreamingResponse(stream_answer(request.message), media_type="text/plain")
    completion = client.chat.completions.create(model=MODEL, messages=messages_for(request.message))  # type: ignore[arg-type]
    return {"answer": completion.choices[0].message.content or ""}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8006")))
