"""Minimal unmodified LLM agent for deploy/compose: no proxy or session code, only LLMObs spans."""

from __future__ import annotations

from ddtrace.llmobs import LLMObs
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Chat(BaseModel):
    message: str


@app.post("/chat")
def chat(body: Chat) -> dict[str, str]:
    # session_id is deliberately absent: the proxy (and the hook) supply it.
    with LLMObs.workflow(name="chat"):
        with LLMObs.llm(model_name="echo", model_provider="local", name="echo") as span:
            reply = body.message[::-1]
            LLMObs.annotate(span=span, input_data=body.message, output_data=reply)
    return {"reply": reply}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
