"""Retargeting the Services and NetworkPolicies in front of injected workloads at the proxy."""

from __future__ import annotations

from proxy.inject.model import (
    INJECT,
    PROXY_PORT_NAME,
    Injection,
    Manifest,
    Refused,
    Workload,
    reference,
)


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
    agent_ports = {w.agent_port for w in injected if w.agent_port is not None}
    changed = []
    for port in (service.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if target is not None and any(target in (p.number, p.name) for p in agent_ports):
            port["targetPort"] = PROXY_PORT_NAME
            changed.append(str(port.get("name") or port.get("port")))
    if changed:
        result.changed.append(f"{reference(service)}: port {', '.join(changed)} now targets {PROXY_PORT_NAME}")
    elif not any(
        p.get("targetPort") in (PROXY_PORT_NAME, *(w.proxy_port for w in injected))
        for p in (service.get("spec") or {}).get("ports") or []
    ):
        ports = " or ".join(p.describe() for p in sorted(agent_ports, key=lambda p: p.number))
        result.notes.append(
            f"{reference(service)}: selects {', '.join(reference(w.obj) for w in injected)} but no port reaches "
            f"the agent's port {ports}; left as it was"
        )


def open_network_policy(policy: Manifest, injected: list[Workload], result: Injection) -> None:
    """An ingress rule that lets clients reach the agent's port now lets them reach the proxy's port too."""
    spec = policy.get("spec") or {}
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    namespace = (policy.get("metadata") or {}).get("namespace")
    agent_ports = {
        workload.agent_port
        for workload in injected
        if workload.agent_port is not None
        and (workload.obj.get("metadata") or {}).get("namespace") == namespace
        and all(
            ((workload.template.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items()
        )
    }
    opened = 0
    for rule in spec.get("ingress") or []:
        ports = rule.get("ports") or []  # none listed: every port is already allowed
        reaches_agent = any(
            p.get("port") is not None and p.get("port") in (a.number, a.name) for p in ports for a in agent_ports
        )
        if reaches_agent and not any(p.get("port") == PROXY_PORT_NAME for p in ports):
            ports.append({"port": PROXY_PORT_NAME, "protocol": "TCP"})
            opened += 1
    if opened:
        result.changed.append(f"{reference(policy)}: ingress allowed to the agent's port now also to {PROXY_PORT_NAME}")
