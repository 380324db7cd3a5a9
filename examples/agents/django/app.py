"""Example agent: a single-file Django project with a chat view calling an OpenAI-compatible API."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only",  # noqa: S106
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from ddtrace.llmobs import LLMObs  # noqa: E402
from ddtrace.llmobs.decorators import tool, workflow  # noqa: E402
from openai import OpenAI  # noqa: E402

MODEL = os.environ.get("AGENT_MODEL", "fake-gpt")
SYSTEM = "You are a helpful shop assistant."
client = OpenAI()


@tool
def lookup_faq(question: str) -> str:
    return "Shipping takes 3 days." if "ship" in question.lower() else "No FAQ entry."


def _messages(message: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"{SYSTEM} {lookup_faq(message)}"}, {"role": "user", "content": message}]


@workflow(name="chat")
def answer(message: str) -> str:
    completion = client.chat.completions.create(model=MODEL, messages=_messages(message))  # type: ignore[arg-type]
    return completion.choices[0].message.content or ""


def stream_answer(message: str) -> Iterator[str]:
    with LLMObs.workflow(name="chat.stream"):
        for chunk in client.chat.completions.create(model=MODEL, messages=_messages(message), stream=True):  # type: ignore[arg-type]
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


@csrf_exempt
def chat(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body or b"{}")
    if body.get("stream"):
        return StreamingHttpResponse(stream_answer(body["message"]), content_type="text/plain")
    return JsonResponse({"answer": answer(body["message"])})


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [path("chat", chat), path("healthz", healthz)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    port = os.environ.get("PORT", "8005")
    execute_from_command_line([sys.argv[0], "runserver", "--noreload", f"127.0.0.1:{port}"])
