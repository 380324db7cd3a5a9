"""rum-llmobs-proxy: links Datadog RUM browser sessions to the LLM Observability traces of an agent service."""

__version__ = "0.1.0"


def compiled() -> bool:
    """Whether the request path runs as the C extensions mypyc built (setup.py) rather than as plain Python."""
    from proxy import http1  # a compiled leaf: asking imports nothing else (prometheus_client must wait, workers.py)

    return not (http1.__file__ or "").endswith(".py")
