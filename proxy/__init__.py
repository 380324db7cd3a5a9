"""rum-llmobs-proxy: links Datadog RUM browser sessions to the LLM Observability traces of an agent service."""

__version__ = "0.1.0"
