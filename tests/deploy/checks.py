"""Structural checks of injected manifests, written from Kubernetes' rules rather than from the injector's code.

Each check takes the objects before and after injection and raises AssertionError; test_inject.py proves that
each one fails on a deliberately broken copy of a good output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes_validate

Doc = dict[str, Any]
Check = Callable[[list[Doc], list[Doc]], None]

# Native sidecars (initContainers[].restartPolicy: Always) are on by default from 1.29 and stable from 1.33; a
# Service's named targetPort reaches a native sidecar's port only from 1.33 (kubernetes/kubernetes#127958).
_NEWEST_MINOR = int(kubernetes_validate.latest_version().split(".")[1])
SUPPORTED_VERSIONS = [f"1.{minor}.0" for minor in range(29, _NEWEST_MINOR + 1)]
SIDECAR_PORT_NAMES_FROM = (1, 33)
# Every check validates against these (the oldest supported, the first with stable sidecars, the newest);
# test_inject.py validates every fixture against every supported version.
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0", kubernetes_validate.latest_version()]
SIDECAR = "rum-llmobs-proxy"
HOOK = "rum-llmobs-hook"
HOOK_IMAGE_DIR = "/opt/rum-llmobs-hook"
# Time the agent container gets to stop before the sidecar's own drain starts (same grace period).
GRACE_MARGIN_SECONDS = 10
TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


# ---------------------------------------------------------------- navigation


def objects(docs: list[Doc]) -> Iterator[Doc]:
    """Every object, the items of `List` documents included."""
    for doc in docs:
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            yield from objects(doc["items"])
        else:
            yield doc


def ref(obj: Doc) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace') or '-'}/{obj['metadata']['name']}"


def template_of(obj: Doc) -> Doc | None:
    path = TEMPLATE_PATHS.get(obj.get("kind", ""))
    node: Any = obj
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def by_name(items: list[Doc], name: str) -> Doc:
    found = [i for i in items if i.get("name") == name]
    assert len(found) == 1, f"expected one entry named {name!r} in {[i.get('name') for i in items]}"
    return found[0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def injected(docs: list[Doc]) -> list[Doc]:
    """Workloads whose pod has the proxy sidecar."""
    return [
        o
        for o in objects(docs)
        if (t := template_of(o)) and any(c["name"] == SIDECAR for c in t["spec"].get("initContainers", []))
    ]


def sidecar_of(obj: Doc) -> Doc:
    template = template_of(obj)
    assert template is not None
    return by_name(template["spec"]["initContainers"], SIDECAR)


def agent_of(obj: Doc) -> Doc:
    """The app container that mounts the hook: the Python agent."""
    template = template_of(obj)
    assert template is not None
    mounting = [c for c in template["spec"]["containers"] if any(m["name"] == HOOK for m in c.get("volumeMounts", []))]
    assert len(mounting) == 1, f"{ref(obj)}: exactly one app container must mount the hook volume"
    return mounting[0]


def proxy_setting(obj: Doc, name: str, default: str) -> str:
    entry = env_of(sidecar_of(obj)).get(name)
    return str(entry["value"]) if entry and "value" in entry else default


def resolve_port(
    pod: Doc, port: int | str, protocol: str = "TCP", version: str | None = None
) -> tuple[str, int] | None:
    """(container name, number) a Service targetPort or probe port reaches in the pod on Kubernetes `version` (the
    newest when None), or None. As Kubernetes' FindPort: a number is itself; a name is the first port with that name
    and protocol in the regular containers, then — from 1.33 only — in the native sidecars (restartPolicy Always)."""
    containers = pod["containers"]
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    if isinstance(port, int):
        owners = [c["name"] for c in containers + sidecars for p in c.get("ports", []) if p["containerPort"] == port]
        return (owners[0] if owners else "?"), port
    searched = containers
    if version is None or tuple(map(int, version.split(".")[:2])) >= SIDECAR_PORT_NAMES_FROM:
        searched = containers + sidecars
    for container in searched:
        for declared in container.get("ports", []):
            if declared.get("name") == port and declared.get("protocol", "TCP") == protocol:
                return container["name"], declared["containerPort"]
    return None


def probe_port(container: Doc, port: int | str) -> int | None:
    """The number a probe's port names: the kubelet looks a name up in the probed container's own ports."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def before_of(before: list[Doc], obj: Doc) -> Doc:
    matches = [b for b in objects(before) if ref(b) == ref(obj)]
    assert len(matches) == 1, f"{ref(obj)} is not in the input"
    return matches[0]


def selects(service: Doc, obj: Doc) -> bool:
    selector = service["spec"].get("selector") or {}
    template = template_of(obj)
    return bool(
        selector
        and template
        and service["metadata"].get("namespace") == obj["metadata"].get("namespace")
        and selector.items() <= (template["metadata"].get("labels") or {}).items()
    )


# ---------------------------------------------------------------- checks


def check_valid(before: list[Doc], after: list[Doc]) -> None:
    """Strict schema validation on 1.33 and the newest schemas kubernetes-validate ships; custom resources skip."""
    for obj in objects(after):
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                group = obj["apiVersion"].rpartition("/")[0]
                assert "." in group and not group.endswith(".k8s.io"), f"no schema for built-in {ref(obj)}"
            except kubernetes_validate.ValidationError as error:
                raise AssertionError(
                    f"{ref(obj)} invalid for {version}: {error.message} at {'.'.join(map(str, error.path))}"
                ) from error


def check_native_sidecar(before: list[Doc], after: list[Doc]) -> None:
    assert injected(after), "nothing was injected"
    for obj in injected(after):
        pod = template_of(obj)["spec"]  # type: ignore[index]
        names = [c["name"] for c in pod["initContainers"]]
        assert names[:2] == [HOOK, SIDECAR], f"{ref(obj)}: ours must run first, hook copier then proxy: {names}"
        assert names.count(SIDECAR) == 1 and names.count(HOOK) == 1, f"{ref(obj)}: doubled: {names}"
        sidecar, copier = sidecar_of(obj), by_name(pod["initContainers"], HOOK)
        assert sidecar.get("restartPolicy") == "Always", "the proxy must be a native sidecar"
        assert "restartPolicy" not in copier, "the hook copier must run to completion"
        assert copier["image"] == sidecar["image"], "one image serves both roles"
        assert SIDECAR not in [c["name"] for c in pod["containers"]]
        original = template_of(before_of(before, obj))["spec"]  # type: ignore[index]
        kept = [c for c in original.get("initContainers", []) if c["name"] not in (HOOK, SIDECAR)]
        assert pod["initContainers"][2:] == kept, f"{ref(obj)}: the pod's own init containers must stay, in order"


def check_probes(before: list[Doc], after: list[Doc]) -> None:
    for obj in injected(after):
        sidecar = sidecar_of(obj)
        admin_port = int(proxy_setting(obj, "RUM_PROXY_ADMIN_PORT", "8081"))
        # No startupProbe: it would hold the agent's start until it passed (issue 20); readiness every second.
        assert "startupProbe" not in sidecar, "a startupProbe would delay the agent container's start"
        assert sidecar["readinessProbe"]["periodSeconds"] == 1
        expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe_name, path in expected.items():
            probe = sidecar.get(probe_name)
            assert probe is not None, f"{probe_name} missing"
            assert probe["httpGet"]["path"] == path, probe_name
            assert probe_port(sidecar, probe["httpGet"]["port"]) == admin_port, probe_name


def check_container_restricted(container: Doc, pod_context: Doc) -> None:
    context = container.get("securityContext", {})

    def effective(key: str) -> Any:
        return context.get(key, pod_context.get(key))

    name = container["name"]
    assert effective("runAsNonRoot") is True, f"{name}: runAsNonRoot"
    assert effective("runAsUser") != 0, f"{name}: runAsUser 0"
    assert context.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
    assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: drop ALL"
    seccomp = effective("seccompProfile") or {}
    assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile"


def check_restricted_pod_security(before: list[Doc], after: list[Doc]) -> None:
    """Our containers meet the Restricted standard on their own, whatever the pod's context says."""
    for obj in injected(after):
        pod = template_of(obj)["spec"]  # type: ignore[index]
        for name in (SIDECAR, HOOK):
            container = by_name(pod["initContainers"], name)
            check_container_restricted(container, {})
            assert container["securityContext"].get("readOnlyRootFilesystem") is True, f"{name}: read-only root"
            limits = container.get("resources", {}).get("limits", {})
            assert "memory" in limits and "cpu" in container.get("resources", {}).get("requests", {}), name


def check_hook_wiring(before: list[Doc], after: list[Doc]) -> None:
    for obj in injected(after):
        template = template_of(obj)
        assert template is not None
        pod = template["spec"]
        assert "emptyDir" in by_name(pod["volumes"], HOOK), "the hook lives in an emptyDir"
        copier = by_name(pod["initContainers"], HOOK)
        copier_mount = by_name(copier["volumeMounts"], HOOK)["mountPath"]
        assert copier["command"] == ["cp", "-R", f"{HOOK_IMAGE_DIR}/.", f"{copier_mount}/"]
        agent = agent_of(obj)
        agent_mount = by_name(agent["volumeMounts"], HOOK)
        assert agent_mount.get("readOnly") is True and agent_mount["mountPath"] == copier_mount
        pythonpath = env_of(agent).get("PYTHONPATH")
        assert pythonpath is not None and "value" in pythonpath, (
            "PYTHONPATH must be a plain value (Datadog library injection rejects valueFrom)"
        )
        entries = pythonpath["value"].split(":")
        # First: a sitecustomize in front of the hook's would hide it (Python imports only the first one found);
        # the hook's runs the next one, so whatever comes after it still runs (/datadog-lib/ included).
        assert entries[0] == agent_mount["mountPath"], f"{agent_mount['mountPath']} must come first in {entries}"
        assert entries.count(agent_mount["mountPath"]) == 1, f"{agent_mount['mountPath']} once in {entries}"
        original = env_of(before_of_agent(before, obj)).get("PYTHONPATH")
        annotations = {**obj["metadata"].get("annotations", {}), **template["metadata"].get("annotations", {})}
        value = original.get("value", "") if original else annotations.get("rum-llmobs-proxy/image-pythonpath", "")
        # Every entry as it was, in order, empty ones too (Python reads an empty entry as the working directory).
        kept = [e for e in value.split(":") if e.rstrip("/") != agent_mount["mountPath"]] if value else []
        assert entries[1:] == kept, f"the agent's own PYTHONPATH entries stay, in order: {kept} in {entries}"
        # The agent's hook and the proxy must agree on the forwarded header's name.
        header = env_of(agent).get("RUM_PROXY_SESSION_HEADER")
        assert header is not None and "value" in header, "agent needs RUM_PROXY_SESSION_HEADER for the hook"
        assert header["value"] == proxy_setting(obj, "RUM_PROXY_SESSION_HEADER", "x-rum-session-id")


def before_of_agent(before: list[Doc], obj: Doc) -> Doc:
    template = template_of(before_of(before, obj))
    assert template is not None
    return by_name(template["spec"]["containers"], agent_of(obj)["name"])


def check_app_containers_kept(before: list[Doc], after: list[Doc]) -> None:
    """Only the agent's PYTHONPATH, session header and hook mount change; other containers are untouched."""
    ours_env, ours_mounts = {"PYTHONPATH", "RUM_PROXY_SESSION_HEADER"}, {HOOK}
    for obj in injected(after):
        original = template_of(before_of(before, obj))["spec"]["containers"]  # type: ignore[index]
        now = template_of(obj)["spec"]["containers"]  # type: ignore[index]
        assert [c["name"] for c in now] == [c["name"] for c in original]
        for old, new in zip(original, now, strict=True):
            for key in old.keys() | new.keys():
                if key == "env":
                    assert [e for e in new.get("env", []) if e["name"] not in ours_env] == [
                        e for e in old.get("env", []) if e["name"] not in ours_env
                    ], f"{old['name']}: env"
                elif key == "volumeMounts":
                    assert [m for m in new.get("volumeMounts", []) if m["name"] not in ours_mounts] == [
                        m for m in old.get("volumeMounts", []) if m["name"] not in ours_mounts
                    ], f"{old['name']}: volumeMounts"
                else:
                    assert old.get(key) == new.get(key), f"{old['name']}: {key} changed"
            if new is not agent_of(obj):
                assert new == old, f"{new['name']} is not the agent and must not change"


def check_proxy_env(before: list[Doc], after: list[Doc]) -> None:
    for obj in injected(after):
        template = template_of(obj)
        assert template is not None
        sidecar = sidecar_of(obj)
        upstream = proxy_setting(obj, "RUM_PROXY_UPSTREAM_URL", "")
        assert re.fullmatch(r"http://(127\.0\.0\.1|localhost):\d+/?", upstream), (
            f"the upstream is the agent in the same pod, got {upstream!r}"
        )
        upstream_port = int(upstream.rstrip("/").rsplit(":", 1)[1])
        agent_ports = [p["containerPort"] for p in agent_of(obj).get("ports", [])]
        annotations = {**obj["metadata"].get("annotations", {}), **template["metadata"].get("annotations", {})}
        if annotations.get("rum-llmobs-proxy/agent-port") != str(upstream_port):  # an undeclared port, named
            assert upstream_port in agent_ports, "RUM_PROXY_UPSTREAM_URL must name an agent port"
        own_ports = {p["containerPort"] for p in sidecar["ports"]}
        others = [
            p["containerPort"]
            for c in template["spec"]["containers"] + template["spec"]["initContainers"]
            if c is not sidecar
            for p in c.get("ports", [])
        ]
        assert upstream_port not in own_ports and not own_ports & set(others), "port collision in the pod"
        assert int(proxy_setting(obj, "RUM_PROXY_PORT", "8080")) in own_ports
        assert int(proxy_setting(obj, "RUM_PROXY_ADMIN_PORT", "8081")) in own_ports
        labels = template["metadata"]["labels"]
        for var in ("DD_ENV", "DD_SERVICE", "DD_VERSION"):
            if var == "DD_ENV" and "tags.datadoghq.com/env" not in labels:
                assert var not in env_of(sidecar), "DD_ENV would point at a missing label"
                continue
            field = env_of(sidecar)[var]["valueFrom"]["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", field)
            assert label is not None and label.group(1).startswith("tags.datadoghq.com/"), field
            assert label.group(1) in labels, f"{var} points at missing pod label {label.group(1)}"


def check_service_ports(before: list[Doc], after: list[Doc]) -> None:
    """Exactly the (TCP) Service ports that reached the agent's port now reach the proxy on every supported
    Kubernetes version; the others are as they were."""
    workloads = injected(after)
    for service in (o for o in objects(after) if o["kind"] == "Service"):
        backends = [w for w in workloads if selects(service, w)]
        if not backends:
            continue
        original = before_of(before, service)
        assert len(service["spec"]["ports"]) == len(original["spec"]["ports"]), ref(service)
        for old, new in zip(original["spec"]["ports"], service["spec"]["ports"], strict=True):
            for backend in backends:
                pod_before = template_of(before_of(before, backend))["spec"]  # type: ignore[index]
                pod_after = template_of(backend)["spec"]  # type: ignore[index]
                agent_port = int(proxy_setting(backend, "RUM_PROXY_UPSTREAM_URL", ":0").rsplit(":", 1)[1])
                proxy_port = int(proxy_setting(backend, "RUM_PROXY_PORT", "8080"))
                protocol = old.get("protocol", "TCP")
                reached_before = resolve_port(pod_before, old.get("targetPort", old["port"]), protocol)
                name = f"{ref(service)} port {old.get('name') or old['port']}"
                if protocol == "TCP" and reached_before is not None and reached_before[1] == agent_port:
                    for version in SUPPORTED_VERSIONS:
                        reached_now = resolve_port(pod_after, new.get("targetPort", new["port"]), protocol, version)
                        assert reached_now == (SIDECAR, proxy_port), (
                            f"{name} must reach the proxy on Kubernetes {version}, reaches {reached_now}"
                        )
                elif reached_before != (SIDECAR, proxy_port):
                    assert new == old, f"{name} did not reach the agent and must be left as it was"


def _policy_selects(policy: Doc, obj: Doc) -> bool:
    selector = policy["spec"].get("podSelector", {}).get("matchLabels", {})
    template = template_of(obj)
    return bool(
        template
        and policy["metadata"].get("namespace") == obj["metadata"].get("namespace")
        and selector.items() <= (template["metadata"].get("labels") or {}).items()
    )


def _without_proxy_ports(policy: Doc, pods: list[Doc]) -> Doc:
    """The policy with every ingress port entry that reaches a proxy sidecar taken out."""
    stripped = json.loads(json.dumps(policy))
    for rule in stripped["spec"].get("ingress", []):
        if "ports" in rule:
            rule["ports"] = [
                p
                for p in rule["ports"]
                if not any((resolve_port(pod, p["port"]) or ("",))[0] == SIDECAR for pod in pods)
            ]
    return stripped


def check_network_policies(before: list[Doc], after: list[Doc]) -> None:
    """Clients a policy let in on the agent's port are let in on the proxy's port; nothing else opens."""
    for policy in (o for o in objects(after) if o["kind"] == "NetworkPolicy"):
        backends = [w for w in injected(after) if _policy_selects(policy, w)]
        pods = [template_of(w)["spec"] for w in backends]  # type: ignore[index]
        original = before_of(before, policy)
        assert _without_proxy_ports(policy, pods) == original, f"{ref(policy)}: only proxy ports may be added"
        for old, new in zip(original["spec"].get("ingress", []), policy["spec"].get("ingress", []), strict=True):
            if "ports" not in old:
                continue
            for backend, pod in zip(backends, pods, strict=True):
                agent = int(proxy_setting(backend, "RUM_PROXY_UPSTREAM_URL", ":0").rsplit(":", 1)[1])
                proxy = int(proxy_setting(backend, "RUM_PROXY_PORT", "8080"))
                pod_before = template_of(before_of(before, backend))["spec"]  # type: ignore[index]
                if any((resolve_port(pod_before, p["port"]) or ("", 0))[1] == agent for p in old["ports"]):
                    reached = [resolve_port(pod, p["port"]) for p in new["ports"]]
                    assert (SIDECAR, proxy) in reached, f"{ref(policy)} lets clients reach the agent, not the proxy"


def check_grace_period(before: list[Doc], after: list[Doc]) -> None:
    for obj in injected(after):
        pod = template_of(obj)["spec"]  # type: ignore[index]
        drain = int(proxy_setting(obj, "RUM_PROXY_SHUTDOWN_GRACE_SECONDS", "25"))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= drain + GRACE_MARGIN_SECONDS, f"grace {grace}s < drain {drain}s + margin"
        original = template_of(before_of(before, obj))["spec"].get("terminationGracePeriodSeconds", 30)  # type: ignore[index]
        assert grace >= original, "a longer grace period of the pod's own must be kept"


def check_autodiscovery(before: list[Doc], after: list[Doc]) -> None:
    for obj in injected(after):
        template = template_of(obj)
        assert template is not None
        annotations = template["metadata"].get("annotations", {})
        names = {c["name"] for c in template["spec"]["containers"] + template["spec"]["initContainers"]}
        for key in annotations:
            if key.startswith("ad.datadoghq.com/") and "." in key.split("/", 1)[1]:
                assert key.split("/", 1)[1].rsplit(".", 1)[0] in names, key
        logs = json.loads(annotations[f"ad.datadoghq.com/{SIDECAR}.logs"])
        assert logs[0]["source"] and logs[0]["service"]
        checks = json.loads(annotations[f"ad.datadoghq.com/{SIDECAR}.checks"])
        instance = checks["openmetrics"]["instances"][0]
        admin_port = proxy_setting(obj, "RUM_PROXY_ADMIN_PORT", "8081")
        assert instance["openmetrics_endpoint"] == f"http://%%host%%:{admin_port}/metrics"
        prefix = re.escape(instance.get("raw_metric_prefix", ""))
        assert any(re.fullmatch(f"{prefix}{p}(_total)?", "rum_proxy_requests_total") for p in instance["metrics"])
        labels = template["metadata"]["labels"]
        for tag in ("service", "version"):
            assert labels.get(f"tags.datadoghq.com/{SIDECAR}.{tag}"), f"unified service tag {tag} for the sidecar"


def _without_template(obj: Doc) -> Doc:
    copy = json.loads(json.dumps(obj))
    *path, last = TEMPLATE_PATHS[obj["kind"]]
    node = copy
    for key in path:
        node = node[key]
    del node[last]
    return copy


def check_workload_outside_pod_kept(before: list[Doc], after: list[Doc]) -> None:
    """An injected workload changes only inside its pod template, whose labels only gain the sidecar's tags:
    its selector is immutable (kubectl apply to an existing Deployment fails) and the Services select by labels."""
    for obj in injected(after):
        old = before_of(before, obj)
        assert _without_template(obj) == _without_template(old), f"{ref(obj)} changed outside its pod template"
        labels = template_of(obj)["metadata"].get("labels") or {}  # type: ignore[index]
        ours = {f"tags.datadoghq.com/{SIDECAR}.service", f"tags.datadoghq.com/{SIDECAR}.version"}
        old_labels = template_of(old)["metadata"].get("labels") or {}  # type: ignore[index]
        assert {k: v for k, v in labels.items() if k not in ours} == {
            k: v for k, v in old_labels.items() if k not in ours
        }, f"{ref(obj)}: pod labels changed"


def check_others_unchanged(before: list[Doc], after: list[Doc]) -> None:
    """Same documents in the same order; what is neither injected nor a Service in front of it is identical."""
    assert [ref(o) for o in objects(after)] == [ref(o) for o in objects(before)]
    changed = {ref(o) for o in injected(after)}
    services = {
        ref(s) for s in objects(after) if s["kind"] == "Service" and any(selects(s, w) for w in injected(after))
    }
    policies = {
        ref(p)
        for p in objects(after)
        if p["kind"] == "NetworkPolicy" and any(_policy_selects(p, w) for w in injected(after))
    }
    for old, new in zip(objects(before), objects(after), strict=True):
        if ref(new) not in changed | services | policies:
            assert new == old, f"{ref(new)} changed"
        elif ref(new) in services:
            assert {k: v for k, v in new.items() if k != "spec"} == {k: v for k, v in old.items() if k != "spec"}
            assert {k: v for k, v in new["spec"].items() if k != "ports"} == {
                k: v for k, v in old["spec"].items() if k != "ports"
            }, f"{ref(new)}: only ports may change"


ALL_CHECKS: list[Check] = [
    check_valid,
    check_native_sidecar,
    check_probes,
    check_restricted_pod_security,
    check_hook_wiring,
    check_app_containers_kept,
    check_proxy_env,
    check_service_ports,
    check_network_policies,
    check_grace_period,
    check_autodiscovery,
    check_others_unchanged,
    check_workload_outside_pod_kept,
]
