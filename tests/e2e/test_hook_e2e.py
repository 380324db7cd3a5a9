"""The hook makes the browser's RUM session the session of every LLMObs span, behind the real proxy.

The proxy runs with its own tracing off, so only the header and baggage it forwards reach the agent:
whatever session the spans carry comes from the hook.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.e2e.conftest import HOOK_DIR, datadog_env, run_agent, run_proxy
from tests.e2e.sessions import (
    SOURCES,
    WORKFLOW_TOOL_LLM,
    assert_every_span_has_session,
    chat,
    new_session_id,
    rum_cookie,
    spans_of_session,
    wait_for_session,
)
from tests.support.processes import VENV_PYTHON, free_port, running
from tests.support.testagent import TestAgent, session_id_of

pytestmark = pytest.mark.integration

FRAMEWORKS = ("fastapi", "flask", "django", "aiohttp", "http_server")


@pytest.fixture(scope="module", params=FRAMEWORKS)
def proxied_agent(request: pytest.FixtureRequest, test_agent: TestAgent, fake_llm: str) -> Iterator[str]:
    with run_agent(request.param, test_agent, fake_llm) as agent, run_proxy(agent, propagate=False) as proxy:
        yield proxy


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("source", SOURCES)
def test_every_llmobs_span_of_the_request_carries_the_rum_session(
    proxied_agent: str, test_agent: TestAgent, source: str, stream: bool
) -> None:
    session_id = new_session_id()
    chat(proxied_agent, "/chat", session_id, source, stream=stream)
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)


@pytest.fixture(scope="module")
def fastapi_agent(test_agent: TestAgent, fake_llm: str) -> Iterator[str]:
    with run_agent("fastapi", test_agent, fake_llm, env={"RUM_LLMOBS_HOOK_BAGGAGE_TAGS": "true"}) as agent:
        yield agent


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_asyncio_tasks_of_an_async_endpoint_get_the_session(
    fastapi_agent: str, test_agent: TestAgent, stream: bool
) -> None:
    session_id = new_session_id()
    with run_proxy(fastapi_agent, propagate=False) as proxy:
        chat(proxy, "/chat/async", session_id, "cookie", stream=stream)
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert {e["name"] for e in spans} >= {"lookup_faq_async", "lookup_faq"}


def test_a_session_the_application_sets_wins(fastapi_agent: str, test_agent: TestAgent) -> None:
    rum_session, app_session = new_session_id(), f"conversation-{new_session_id()}"
    chat(fastapi_agent, "/chat/own-session", rum_session, "header", extra_body={"conversation_id": app_session})
    spans = wait_for_session(test_agent, app_session)
    assert_every_span_has_session(spans, app_session, WORKFLOW_TOOL_LLM)
    assert not spans_of_session(test_agent.llmobs_span_events(), rum_session)


def test_header_wins_over_baggage_and_invalid_ids_are_ignored(fastapi_agent: str, test_agent: TestAgent) -> None:
    header_session, baggage_session = new_session_id(), new_session_id()
    chat(
        fastapi_agent,
        "/chat",
        header_session.upper(),
        "header",
        extra_headers={"baggage": f"session.id={baggage_session}"},
    )
    spans = wait_for_session(test_agent, header_session)
    assert_every_span_has_session(spans, header_session, WORKFLOW_TOOL_LLM)

    marker = new_session_id()  # only in the message, to find this request's spans
    invalid = {"x-rum-session-id": f"{marker}x", "baggage": f"session.id={marker[:-1]}"}
    chat(fastapi_agent, "/chat", None, "header", extra_headers=invalid, marker=marker)
    events = test_agent.wait_for_llmobs_spans(
        lambda evs: any(marker in str(e.get("meta", {}).get("input", "")) for e in evs)
    )
    mine = [e for e in events if marker in str(e.get("meta", {}).get("input", ""))]
    assert mine and all(session_id_of(e) is None for e in mine)


def test_opt_in_baggage_user_and_account_become_span_tags(fastapi_agent: str, test_agent: TestAgent) -> None:
    session_id = new_session_id()
    baggage = f"session.id={session_id},user.id=user%2042,account.id=acme,other=x"
    chat(fastapi_agent, "/chat", None, "header", extra_headers={"baggage": baggage})
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    for event in spans:
        tags = dict(t.split(":", 1) for t in event["tags"])
        assert tags.get("account.id") == "acme"
        assert "user.id" not in tags  # "user 42" has a space: not a safe tag value
        assert "other" not in tags


# ---------------------------------------------------------------- WebSocket messages, with and without ddtrace's spans

WEBSOCKET_AGENT = '''\
"""A FastAPI agent that answers each WebSocket message inside an LLMObs workflow (and never reads a session)."""
import os

import uvicorn
from ddtrace.llmobs import LLMObs
from fastapi import FastAPI, WebSocket

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.websocket("/ws")
async def chat(socket: WebSocket) -> None:
    await socket.accept()
    async for text in socket.iter_text():
        with LLMObs.workflow(name="ws_message"):
            LLMObs.annotate(input_data=text, output_data="ok")
        await socket.send_text("ok " + text)


uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
'''


@pytest.fixture(scope="module", params=["true", "false"], ids=["messages-traced", "messages-not-traced"])
def websocket_agent(
    request: pytest.FixtureRequest, test_agent: TestAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """DD_TRACE_WEBSOCKET_MESSAGES_ENABLED both ways: with false ddtrace makes no handshake span and extracts no
    headers, so the hook has to read the upgrade request itself."""
    app = tmp_path_factory.mktemp("ws-agent") / "app.py"
    app.write_text(WEBSOCKET_AGENT)
    port = free_port()
    env = {
        **datadog_env(test_agent, "e2e-websocket"),
        "PORT": str(port),
        "PYTHONPATH": str(HOOK_DIR),
        "DD_TRACE_WEBSOCKET_MESSAGES_ENABLED": request.param,
    }
    argv = [str(VENV_PYTHON.parent / "ddtrace-run"), str(VENV_PYTHON), str(app)]
    base = f"http://127.0.0.1:{port}"
    with running("agent-websocket", argv, env=env, ready_url=base + "/healthz", timeout=60):
        with run_proxy(base, propagate=False) as proxy:
            yield proxy


@pytest.mark.parametrize("source", ["query", "cookie"])
async def test_websocket_messages_get_the_session_whatever_ddtrace_traces(
    websocket_agent: str, test_agent: TestAgent, source: str
) -> None:
    session_id = new_session_id()
    url = websocket_agent.replace("http://", "ws://") + "/ws"
    params = {"session_id": session_id} if source == "query" else {}
    headers = {"cookie": rum_cookie(session_id)} if source == "cookie" else {}
    async with aiohttp.ClientSession() as client, client.ws_connect(url, params=params, headers=headers) as socket:
        for index in range(2):
            await socket.send_str(f"message {index} of {session_id}")
            assert (await socket.receive_str()).startswith("ok ")
    spans = wait_for_session(test_agent, session_id, kinds=frozenset({"workflow"}))
    assert len(spans) == 2, [(e.get("name"), session_id_of(e)) for e in spans]
    assert_every_span_has_session(spans, session_id, frozenset({"workflow"}))
