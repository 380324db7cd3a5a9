"""What the injector's modules share: the annotation names and defaults, the options, the result, the refusals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy import __version__

PREFIX = "rum-llmobs-proxy/"
INJECT = PREFIX + "inject"
AGENT_CONTAINER = PREFIX + "agent-container"
AGENT_PORT = PREFIX + "agent-port"
IMAGE = PREFIX + "image"
SOURCES = PREFIX + "sources"
ENV = PREFIX + "env"
PROXY_PORT = PREFIX + "proxy-port"
ADMIN_PORT = PREFIX + "admin-port"
# The PYTHONPATH the agent's image sets (its ENV), which a PYTHONPATH in the pod spec replaces: stated, it is kept.
IMAGE_PYTHONPATH = PREFIX + "image-pythonpath"
ANNOTATIONS = (AGENT_CONTAINER, AGENT_PORT, IMAGE, SOURCES, ENV, PROXY_PORT, ADMIN_PORT, IMAGE_PYTHONPATH)

SIDECAR = "rum-llmobs-proxy"
HOOK = "rum-llmobs-hook"
TMP_VOLUME = "rum-llmobs-proxy-tmp"
HOOK_DIR = "/rum-llmobs-hook"
IMAGE_HOOK_DIR = "/opt/rum-llmobs-hook"
PROXY_PORT_NAME = "rum-proxy"
ADMIN_PORT_NAME = "rum-proxy-admin"
DEFAULT_IMAGE = f"rum-llmobs-proxy:{__version__}"
DEFAULT_PROXY_PORT = 8080
DEFAULT_ADMIN_PORT = 8081
DEFAULT_SESSION_HEADER = "x-rum-session-id"
DEFAULT_DRAIN_SECONDS = 25
# Pod deletion: the agent gets SIGTERM first and the sidecar only once it has exited, within the same grace
# period; this is the agent's share (Kubernetes' own default grace is 30 s) on top of the proxy's drain.
AGENT_STOP_SECONDS = 35
KNOWN_SOURCES = ("body", "query", "header", "baggage", "cookie")
# Set from the pod's shape (ports) by the injector: an `env` annotation may not override them.
MANAGED_ENV = ("RUM_PROXY_UPSTREAM_URL", "RUM_PROXY_PORT", "RUM_PROXY_ADMIN_PORT", "RUM_PROXY_ADMIN_HOST")

# (API group, kind) -> path to the pod template. Bare Pods are left alone (their spec is immutable).
POD_TEMPLATE_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    # Sound with native sidecars: once the Job's own containers finish, the kubelet stops the sidecar and the
    # pod completes. Opt-in only (never with all_workloads): a run-to-completion pod seldom serves HTTP.
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}
ALL_WORKLOADS_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")


Manifest = dict[str, Any]


class InjectError(Exception):
    """The manifests were refused; `problems` has one `kind/namespace/name: what is wrong` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Refused(Exception):
    """One object's problem; the caller prefixes the object's reference."""


@dataclass(frozen=True)
class InjectOptions:
    # None: the workload's rum-llmobs-proxy/image annotation, else DEFAULT_IMAGE (which no registry publishes).
    image: str | None = None
    all_workloads: bool = False
    # Refuse a workload that would get DEFAULT_IMAGE (the command line does: a pipeline must not apply it).
    require_image: bool = False


@dataclass
class Injection:
    documents: list[Any]
    injected: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What may break the agent although the manifests are valid; shown even when notes are not.
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AgentPort:
    number: int
    name: str | None

    def describe(self) -> str:
        return f"{self.number} ({self.name})" if self.name else str(self.number)


@dataclass
class Workload:
    obj: Manifest
    template: Manifest
    pod: Manifest  # a copy of the pod spec as it came in, to resolve port names against
    injected: bool = False
    agent_port: AgentPort | None = None
    proxy_port: int | None = None


def reference(obj: Mapping[str, Any]) -> str:
    """`kind/namespace/name`, with `-` for a namespace the manifest leaves to kubectl or Helm."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    return f"{obj.get('kind', '?')}/{metadata.get('namespace') or '-'}/{metadata.get('name', '?')}"


def mapping(parent: Manifest, key: str) -> Manifest:
    """parent[key] as a mapping, created when absent or null (`labels:` with nothing under it)."""
    if parent.get(key) is None:
        parent[key] = {}
    value: Manifest = parent[key]
    return value


def sequence(parent: Manifest, key: str) -> list[Manifest]:
    if parent.get(key) is None:
        parent[key] = []
    value: list[Manifest] = parent[key]
    return value


def put(items: list[Manifest], entry: Manifest) -> None:
    """Replace the entry with the same name in place, or append it."""
    for index, item in enumerate(items):
        if item.get("name") == entry["name"]:
            items[index] = entry
            return
    items.append(entry)
