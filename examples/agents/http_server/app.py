"""Example agent: the stdlib http.server handler of Datadog's guide, calling an LLM inside an LLMObs workflow.

``POST /chat`` calls an OpenAI-compatible API; ``POST /chat/anthropic`` calls Anthropic's Messages API (the
guide's own provider; ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``). ddtrace does not instrument
http.server; the hook reads the proxy header itself and continues the request's trace.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from anthropic import Anthropic
from ddtrace.llmobs import LLMObs
from ddtrace.llmobs.decorators import tool
from openai import OpenAI

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
ANTHROPIC_MODEL = os.environ.get("AGENT_ANTHROPIC_MODEL", "fake-claude")
SYSTEM = "You are a helpful shop assistant."
client = OpenAI()


@functools.cache
def anthropic_client() -> Anthropic:
    return Anthropic()  # created on first use: only the Anthropic path needs its key


@tool
def lookup_faq(question: str) -> str:
    return "Shipping takes 3 days." if "ship" in question.lower() else "No FAQ entry."


def ask_openai(system: str, message: str) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": message}]
    completion = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    return completion.choices[0].message.content or ""


def stream_openai(system: str, message: str) -> Iterator[str]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": message}]
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


def ask_anthropic(system: str, message: str) -> str:
    reply = anthropic_client().messages.create(
        model=ANTHROPIC_MODEL, max_tokens=256, system=system, messages=[{"role": "user", "content": message}]
    )
    return "".join(block.text for block in reply.content if block.type == "text")


def stream_anthropic(system: str, message: str) -> Iterator[str]:
    with anthropic_client().messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=256, system=system, messages=[{"role": "user", "content": message}]
    ) as stream:
        yield from stream.text_stream


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._send(200, "application/json", b'{"status":"ok"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        message, stream = body["message"], bool(body.get("stream"))
        anthropic = urlsplit(self.path).path == "/chat/anthropic"
        with LLMObs.workflow(name="chat.anthropic" if anthropic else "chat"):
            system = f"{SYSTEM} {lookup_faq(message)}"
            if not stream:
                answer = ask_anthropic(system, message) if anthropic else ask_openai(system, message)
                self._send(200, "application/json", json.dumps({"answer": answer}).encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for text in stream_anthropic(system, message) if anthropic else stream_openai(system, message):
                data = text.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8004")))
    ThreadingHTTPServer(address, ChatHandler).serve_forever()
