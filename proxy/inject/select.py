"""Choosing what to inject: the workloads that opt in, their settings, the agent's container and port; refusals."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from proxy.inject.model import (
    ADMIN_PORT,
    AGENT_CONTAINER,
    AGENT_PORT,
    ALL_WORKLOADS_KINDS,
    ANNOTATIONS,
    ENV,
    HOOK,
    INJECT,
    MANAGED_ENV,
    POD_TEMPLATE_PATHS,
    PREFIX,
    PROXY_PORT,
    SIDECAR,
    AgentPort,
    InjectOptions,
    Manifest,
    Refused,
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def flatten(document: Manifest) -> Iterator[Manifest]:
    """The objects of a document: itself, or the items of a `List` (kubectl get -o yaml) or KRM ResourceList."""
    kind = document.get("kind")
    items = document.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                yield from flatten(item)
        return
    yield document


def _group(obj: Mapping[str, Any]) -> str:
    api_version = obj.get("apiVersion")
    return api_version.rpartition("/")[0] if isinstance(api_version, str) else ""


def is_kind(obj: Mapping[str, Any], group: str, kind: str) -> bool:
    return obj.get("kind") == kind and _group(obj) == group


def is_workload(obj: Mapping[str, Any]) -> bool:
    """A kind whose pod template the injector knows where to find."""
    return (_group(obj), str(obj.get("kind"))) in POD_TEMPLATE_PATHS


def pod_template(obj: Manifest) -> Manifest | None:
    path = POD_TEMPLATE_PATHS.get((_group(obj), str(obj.get("kind"))))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def controlled(obj: Manifest) -> bool:
    """A Deployment's ReplicaSet or a CronJob's Job (as `kubectl get -o yaml` lists them): its owner is injected."""
    return any(owner.get("controller") for owner in (obj.get("metadata") or {}).get("ownerReferences") or [])


def opted_in(obj: Manifest, template: Manifest, options: InjectOptions) -> bool:
    values = set()
    for metadata in (obj.get("metadata") or {}, template.get("metadata") or {}):
        for section in ("labels", "annotations"):
            value = (metadata.get(section) or {}).get(INJECT)
            if value is not None:
                if str(value).lower() not in ("true", "false"):
                    raise Refused(f'{section[:-1]} {INJECT} must be "true" or "false", got {value!r}')
                values.add(str(value).lower())
    if "false" in values:
        return False
    return "true" in values or (options.all_workloads and obj.get("kind") in ALL_WORKLOADS_KINDS)


def annotation_settings(obj: Manifest, template: Manifest) -> dict[str, str]:
    """The `rum-llmobs-proxy/*` annotations of the workload, overridden by those of its pod template."""
    found: dict[str, str] = {}
    for metadata in (obj.get("metadata") or {}, template.get("metadata") or {}):
        for key, value in (metadata.get("annotations") or {}).items():
            if key.startswith(PREFIX) and key != INJECT:
                if key not in ANNOTATIONS:
                    raise Refused(f"unknown annotation {key} (known: {', '.join(ANNOTATIONS)})")
                found[key] = str(value)
    return found


# ---------------------------------------------------------------- one workload


def choose_agent_container(spec: Manifest, settings: Mapping[str, str]) -> Manifest:
    containers: list[Manifest] = spec["containers"]
    names = [str(c.get("name")) for c in containers]
    wanted = settings.get(AGENT_CONTAINER)
    if wanted is not None:
        for container in containers:
            if container.get("name") == wanted:
                return container
        raise Refused(f"{AGENT_CONTAINER} {wanted!r} is not one of its containers ({', '.join(names)})")
    if len(containers) == 1:
        return containers[0]
    raise Refused(
        f"{len(containers)} containers ({', '.join(names)}): say which one is the agent with the annotation "
        f"{AGENT_CONTAINER}"
    )


def choose_agent_port(spec: Manifest, agent: Manifest, settings: Mapping[str, str]) -> AgentPort:
    ports = [p for p in agent.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
    declared = [AgentPort(p["containerPort"], p.get("name")) for p in ports if isinstance(p.get("containerPort"), int)]
    listing = ", ".join(p.describe() for p in declared) or "none"
    wanted = settings.get(AGENT_PORT)
    if wanted is not None:
        wanted = wanted.strip()
        if wanted.isdigit():
            number = int(wanted)
            if not 1 <= number <= 65535:
                raise Refused(f"{AGENT_PORT} {wanted!r} is not a port number")
            owners = [
                str(c.get("name"))
                for c in [*(spec.get("initContainers") or []), *spec["containers"]]
                if c is not agent
                and c.get("name") not in (HOOK, SIDECAR)
                and any(p.get("containerPort") == number for p in c.get("ports") or [])
            ]
            if owners and number not in {p.number for p in declared}:
                raise Refused(f"{AGENT_PORT} {number} is a port of container {owners[0]}, not of {agent.get('name')}")
            return next((p for p in declared if p.number == number), AgentPort(number, None))
        for port in declared:
            if port.name == wanted:
                return port
        raise Refused(f"{AGENT_PORT} {wanted!r} is not a TCP port of container {agent.get('name')} ({listing})")
    if len(declared) == 1:
        return declared[0]
    named_http = [p for p in declared if p.name == "http"]
    if len(named_http) == 1:
        return named_http[0]
    problem = "declares no TCP port" if not declared else f"has several TCP ports ({listing}) and none named http"
    raise Refused(f"container {agent.get('name')} {problem}: set the annotation {AGENT_PORT} (a name or number)")


def choose_port(settings: Mapping[str, str], key: str, default: int, taken: set[Any]) -> int:
    wanted = settings.get(key)
    if wanted is None:
        port = default
        while port in taken:
            port += 1
        return port
    if not wanted.strip().isdigit() or not 1 <= int(wanted) <= 65535:
        raise Refused(f"{key} {wanted!r} is not a port number")
    if int(wanted) in taken:
        raise Refused(f"{key} {wanted} is already used in the pod")
    return int(wanted)


def parse_env(text: str) -> dict[str, str]:
    """`K=V,K=V` or a JSON object of strings, numbers or booleans."""
    text = text.strip()
    if not text:
        return {}
    pairs: dict[str, str] = {}
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise Refused(f"{ENV} is not valid JSON: {error}") from None
        if not isinstance(loaded, dict):
            raise Refused(f"{ENV} must be a JSON object")
        for name, value in loaded.items():
            if isinstance(value, bool):
                pairs[name] = str(value).lower()
            elif isinstance(value, str | int | float):
                pairs[name] = str(value)
            else:
                raise Refused(f"{ENV}: {name} must be a string, number or boolean")
    else:
        for item in text.split(","):
            name, equals, value = item.strip().partition("=")
            if not equals:
                raise Refused(f"{ENV}: {item.strip()!r} is not NAME=value (use a JSON object for values with commas)")
            pairs[name.strip()] = value.strip()
    for name in pairs:
        if not _ENV_NAME.fullmatch(name):
            raise Refused(f"{ENV}: {name!r} is not an environment variable name")
        if name in MANAGED_ENV:
            raise Refused(f"{ENV}: {name} is set by the injector (use {AGENT_PORT}, {PROXY_PORT} or {ADMIN_PORT})")
    return pairs


def protocol_of(port: Mapping[str, Any]) -> str:
    """A port's protocol; Kubernetes defaults an absent one to TCP (Services, NetworkPolicies, containers)."""
    return str(port.get("protocol") or "TCP")


def find_port(pod: Manifest, target: Any, protocol: str, sidecars: bool = True) -> tuple[str | None, int] | None:
    """(container, number) a Service targetPort reaches in the pod, resolved as Kubernetes' FindPort does
    (pkg/api/v1/pod/util.go): a number is itself (its container unknown: None); a name is the first port of that
    name *and protocol* in the regular containers, in order, then in the native sidecars (initContainers with
    restartPolicy Always), which Kubernetes searches only from 1.33 (kubernetes/kubernetes#127958): `sidecars`."""
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if isinstance(target, int) and not isinstance(target, bool):
        return None, target
    if not isinstance(target, str):
        return None
    searched = list(pod.get("containers") or [])
    if sidecars:
        searched += [c for c in pod.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in searched:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if port.get("name") == target and protocol_of(port) == protocol and isinstance(number, int):
                return str(container.get("name")), number
    return None
