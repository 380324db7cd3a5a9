"""Generated pods and Services: the injector either refuses (naming the object) or its output passes every
structural check and schema validation, and injecting it again changes nothing."""

from __future__ import annotations

from typing import Any

from checks import ALL_CHECKS, Doc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.inject import InjectError, InjectOptions, inject_documents

OPTIONS = InjectOptions(image="registry.example.com/rum-llmobs-proxy:0.1.0")
PORT_NUMBERS = [80, 5000, 8000, 8080, 8081, 8082, 9090]
PORT_NAMES = ["http", "web", "metrics", "grpc", "api", "admin", "debug", "stats", "health"]
# "" is an empty entry (the working directory for Python): kept wherever it is.
PATH_ENTRIES = ["/app", "/datadog-lib/", "/rum-llmobs-hook", "/srv/lib", ""]


@st.composite
def ports(draw: st.DrawFn, taken: set[int], taken_names: set[str]) -> list[Doc]:
    """A container's ports: numbers and names unique in the pod, as in a pod Kubernetes accepts."""
    numbers = draw(st.lists(st.sampled_from([p for p in PORT_NUMBERS if p not in taken]), max_size=3, unique=True))
    taken.update(numbers)
    free_names = [n for n in PORT_NAMES if n not in taken_names]
    names = draw(st.lists(st.sampled_from(free_names), min_size=len(numbers), max_size=len(numbers), unique=True))
    taken_names.update(names)
    named = draw(st.lists(st.booleans(), min_size=len(numbers), max_size=len(numbers)))
    return [
        {"containerPort": number, **({"name": name} if keep else {})}
        for number, name, keep in zip(numbers, names, named, strict=True)
    ]


@st.composite
def stream(draw: st.DrawFn) -> list[Doc]:
    taken: set[int] = set()
    taken_names: set[str] = set()
    names = draw(st.lists(st.sampled_from(["app", "worker", "shipper"]), min_size=1, max_size=3, unique=True))
    containers: list[dict[str, Any]] = []
    for name in names:
        container: dict[str, Any] = {"name": name, "image": f"example/{name}:1"}
        if declared := draw(ports(taken, taken_names)):
            container["ports"] = declared
        if draw(st.booleans()):
            entries = draw(st.lists(st.sampled_from(PATH_ENTRIES), min_size=0, max_size=3, unique=True))
            container["env"] = [{"name": "PYTHONPATH", "value": ":".join(entries)}]
        containers.append(container)
    annotations = {}
    if len(names) > 1 and draw(st.booleans()):
        annotations["rum-llmobs-proxy/agent-container"] = draw(st.sampled_from(names))
    if draw(st.booleans()):
        annotations["rum-llmobs-proxy/agent-port"] = str(draw(st.sampled_from(PORT_NUMBERS + PORT_NAMES)))
    pod: dict[str, Any] = {"containers": containers}
    if draw(st.booleans()):
        pod["initContainers"] = [{"name": "migrate", "image": "example/migrate:1"}]
    if draw(st.booleans()):
        pod["terminationGracePeriodSeconds"] = draw(st.sampled_from([10, 30, 90, 300]))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bot", "labels": {"rum-llmobs-proxy/inject": "true"}, "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app": "bot"}},
            "template": {"metadata": {"labels": {"app": "bot"}}, "spec": pod},
        },
    }
    targets = [p.get("name") or p["containerPort"] for c in containers for p in c.get("ports", [])] + [7000]
    service_ports = []
    for index, target in enumerate(draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3))):
        port: dict[str, Any] = {"name": f"p{index}", "port": 80 + index}
        if draw(st.booleans()):
            port["targetPort"] = target
        if draw(st.integers(0, 3)) == 0:
            port["protocol"] = "UDP"  # never sent to the proxy
        service_ports.append(port)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bot"},
        "spec": {"selector": {"app": "bot"}, "ports": service_ports},
    }
    return [deployment, service]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream())
def test_refused_or_sound_and_stable(before: list[Doc]) -> None:
    try:
        after = inject_documents(before, OPTIONS)
    except InjectError as error:
        assert error.problems and all(p.startswith("Deployment/-/bot: ") for p in error.problems), error.problems
        return
    for check in ALL_CHECKS:
        check(before, after)
    assert inject_documents(after, OPTIONS) == after
