"""Retargeting the Services and NetworkPolicies in front of injected workloads at the proxy."""

from __future__ import annotations

from typing import Any

from proxy.inject.model import (
    INJECT,
    PROXY_PORT,
    PROXY_PORT_NAME,
    SIDECAR,
    Injection,
    Manifest,
    Refused,
    Workload,
    reference,
)
from proxy.inject.select import find_port, protocol_of


def _selects(service: Manifest, workload: Workload) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return False
    if (service.get("metadata") or {}).get("namespace") != (workload.obj.get("metadata") or {}).get("namespace"):
        return False
    labels = (workload.template.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def retarget_service(service: Manifest, workloads: list[Workload], result: Injection) -> None:
    selected = [w for w in workloads if _selects(service, w)]
    injected = [w for w in selected if w.injected]
    if not injected:
        return
    if opted_out := str(((service.get("metadata") or {}).get("annotations") or {}).get(INJECT, "")).lower():
        if opted_out == "false":
            result.notes.append(f"{reference(service)}: {INJECT}=false, its ports are left as they were")
            return
    bypassing = [w for w in selected if not w.injected]
    if bypassing:
        raise Refused(
            f"selects {', '.join(reference(w.obj) for w in injected)} (injected) and "
            f"{', '.join(reference(w.obj) for w in bypassing)} (not injected): its traffic would reach some pods "
            "through the proxy and others around it; inject both or neither"
        )
    changed = []
    ports = (service.get("spec") or {}).get("ports") or []
    for port in ports:
        target = port.get("targetPort", port.get("port"))
        proxy_port = _reached_proxy_port(injected, target, protocol_of(port))
        if proxy_port is not None and target != proxy_port:
            # A number, not the name rum-proxy: Kubernetes resolves a Service's named targetPort against native
            # sidecar ports only from 1.33 (kubernetes/kubernetes#127958, #128850); a number works on every version.
            port["targetPort"] = proxy_port
            changed.append(f"{port.get('name') or port.get('port')} now targets {proxy_port} ({PROXY_PORT_NAME})")
    if changed:
        result.changed.append(f"{reference(service)}: port {', '.join(changed)}")
    elif not any(_reached_proxy_port(injected, p.get("targetPort", p.get("port")), protocol_of(p)) for p in ports):
        agent_ports = {w.agent_port for w in injected if w.agent_port is not None}
        listing = " or ".join(p.describe() for p in sorted(agent_ports, key=lambda p: p.number))
        result.notes.append(
            f"{reference(service)}: selects {', '.join(reference(w.obj) for w in injected)} but no TCP port reaches "
            f"the agent's port {listing}; left as it was"
        )


def _reached_proxy_port(injected: list[Workload], target: Any, protocol: str) -> int | None:
    """The proxy's port when a Service port reaching `target` must go to the proxy (it reaches the agent's port, or
    the proxy's from an earlier run); the same number for every workload the Service selects, else refused."""
    numbers = set()
    for workload in injected:
        reached = find_port(workload.pod, target, protocol)
        if reached is None or protocol != "TCP" or workload.agent_port is None or workload.proxy_port is None:
            continue
        container, number = reached
        if number == workload.agent_port.number or container == SIDECAR:
            numbers.add(workload.proxy_port)
    if len(numbers) > 1:
        raise Refused(
            f"port {target} reaches workloads whose proxies listen on different ports ({sorted(numbers)}): "
            f"give them the same {PROXY_PORT} annotation"
        )
    return numbers.pop() if numbers else None


def open_network_policy(policy: Manifest, injected: list[Workload], result: Injection) -> None:
    """An ingress rule that lets clients reach the agent's port now lets them reach the proxy's port too."""
    spec = policy.get("spec") or {}
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    namespace = (policy.get("metadata") or {}).get("namespace")
    selected = [
        workload
        for workload in injected
        if workload.agent_port is not None
        and workload.proxy_port is not None
        and (workload.obj.get("metadata") or {}).get("namespace") == namespace
        and all(
            ((workload.template.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items()
        )
    ]
    opened = 0
    for rule in spec.get("ingress") or []:
        ports = rule.get("ports")
        if not ports:  # none listed: every port is already allowed
            continue
        reaching = [w for w in selected if any(_allows(w, p, w.agent_port.number) for p in ports)]  # type: ignore[union-attr]
        if not reaching:
            continue
        # A port named rum-proxy is what an earlier run added: the number goes in its place (see retarget_service).
        kept = [p for p in ports if not (p.get("port") == PROXY_PORT_NAME and protocol_of(p) == "TCP")]
        for workload in reaching:
            if not any(_allows(workload, p, workload.proxy_port) for p in kept):
                kept.append({"port": workload.proxy_port, "protocol": "TCP"})
        if kept != ports:
            rule["ports"] = kept
            opened += 1
    if opened:
        numbers = sorted({w.proxy_port for w in selected if w.proxy_port is not None})
        result.changed.append(
            f"{reference(policy)}: ingress allowed to the agent's port now also to "
            f"{', '.join(map(str, numbers))} ({PROXY_PORT_NAME})"
        )


def _allows(workload: Workload, entry: Manifest, number: int | None) -> bool:
    """Whether a NetworkPolicy port entry lets TCP traffic reach `number` in the workload's pod (a name resolved
    against the pod as it came in, a number, or a range up to endPort)."""
    if number is None or protocol_of(entry) != "TCP":
        return False
    port = entry.get("port")
    if port is None:
        return True  # the protocol with no port: every port
    reached = find_port(workload.pod, port, "TCP")
    if reached is None:
        return False
    first = reached[1]
    end = entry.get("endPort")
    last = end if isinstance(port, int) and isinstance(end, int) else first
    return first <= number <= last
