"""Example agent: the stdlib http.server handler of Datadog's guide, calling an OpenAI-compatible API.

ddtrace does not instrument http.server; the hook reads the proxy header itself.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ddtrace.llmobs import LLMObs
from ddtrace.llmobs.decorators import tool
from openai import OpenAI

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
SYSTEM = "You are a helpful shop assistant."
client = OpenAI()


@tool
def lookup_faq(question: str) -> str:
    return "Shipping takes 3 days." if "ship" in question.lower() else "No FAQ entry."


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._send(200, "application/json", b'{"status":"ok"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        message = body["message"]
        with LLMObs.workflow(name="chat"):
            faq = lookup_faq(message)
            messages = [{"role": "system", "content": f"{SYSTEM} {faq}"}, {"role": "user", "content": message}]
            if not body.get("stream"):
                completion = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
                answer = completion.choices[0].message.content or ""
                self._send(200, "application/json", json.dumps({"answer": answer}).encode())
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True):  # type: ignore[arg-type]
                if chunk.choices and chunk.choices[0].delta.content:
                    data = chunk.choices[0].delta.content.encode()
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
