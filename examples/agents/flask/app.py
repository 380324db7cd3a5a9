"""Example agent: Flask chat endpoint calling an OpenAI-compatible API inside an LLMObs workflow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from ddtrace.llmobs import LLMObs
from ddtrace.llmobs.decorators import tool, workflow
from flask import Flask, Response, jsonify, request, stream_with_context
from openai import OpenAI

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
SYSTEM = "You are a helpful shop assistant."

app = Flask(__name__)
client = OpenAI()
pool = ThreadPoolExecutor(max_workers=2)


@tool
def lookup_faq(question: str) -> str:
    return "Shipping takes 3 days." if "ship" in question.lower() else "No FAQ entry."


def _messages(message: str, faq: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": message}]


@workflow(name="chat")
def answer(message: str) -> str:
    faq = pool.submit(lookup_faq, message).result()  # a tool in another thread
    completion = client.chat.completions.create(model=MODEL, messages=_messages(message, faq))  # type: ignore[arg-type]
    text = completion.choices[0].message.content or ""
    LLMObs.annotate(input_data=message, output_data=text)
    return text


def stream_answer(message: str) -> Iterator[str]:
    with LLMObs.workflow(name="chat.stream"):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=_messages(message, lookup_faq(message)),
            stream=True,  # type: ignore[arg-type]
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@app.post("/chat")
def chat() -> object:
    body = request.get_json(force=True)
    if body.get("stream"):
        return Response(stream_with_context(stream_answer(body["message"])), mimetype="text/plain")
    return jsonify(answer=answer(body["message"]))


@app.get("/healthz")
def healthz() -> object:
    return jsonify(status="ok")


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8002")), threaded=True)
