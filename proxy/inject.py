"""Adds rum-llmobs-proxy to Kubernetes manifests: pure functions over the plain dicts and lists PyYAML loads.

`inject_documents(docs, options)` returns a changed deep copy of `docs` or raises `InjectError` naming every
object it refused (`kind/namespace/name: problem`), so nothing is ever half-written. What it does, per workload
that opts in (label or annotation `rum-llmobs-proxy/inject: "true"`, or every Deployment, StatefulSet, DaemonSet
and ReplicaSet with `all_workloads`):

- pod spec: the hook copier (init container) and the proxy as a native sidecar (`initContainers` entry with
  `restartPolicy: Always`) first, the hook `emptyDir` and the proxy's `/tmp`, a grace period long enough to drain;
- agent container: the hook directory appended to `PYTHONPATH`, `RUM_PROXY_SESSION_HEADER`, the hook mount;
- pod metadata: unified service tags for the sidecar and Datadog Autodiscovery annotations (logs, openmetrics);
- Services in the same stream that select the workload: only the ports whose `targetPort` reaches the agent's
  port (by number or by name) now target the proxy's named port; every other port is left as it was;
- NetworkPolicies in the same stream: an ingress rule that allows the agent's port also allows the proxy's.

Every step replaces what a previous run added instead of adding to it, so running it twice equals running it once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Iterator, Mapping
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
ANNOTATIONS = (AGENT_CONTAINER, AGENT_PORT, IMAGE, SOURCES, ENV, PROXY_PORT, ADMIN_PORT)

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

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_IMAGE_TAG = re.compile(r":([\w][\w.-]{0,127})$")

Manifest = dict[str, Any]


class InjectError(Exception):
    """The manifests were refused; `problems` has one `kind/namespace/name: what is wrong` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Refused(Exception):
    """One object's problem; the caller prefixes the object's reference."""


@dataclass(frozen=True)
class InjectOptions:
    image: str = DEFAULT_IMAGE
    all_workloads: bool = False


@dataclass
class Injection:
    documents: list[Any]
    injected: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _AgentPort:
    number: int
    name: str | None

    def describe(self) -> str:
        return f"{self.number} ({self.name})" if self.name else str(self.number)


@dataclass
class _Workload:
    obj: Manifest
    template: Manifest
    injected: bool = False
    agent_port: _AgentPort | None = None
    proxy_port: int | None = None


def inject_documents(documents: list[Any], options: InjectOptions) -> list[Any]:
    """The documents with rum-llmobs-proxy added; raises InjectError, naming each refused object."""
    return inject(documents, options).documents


def inject(documents: list[Any], options: InjectOptions) -> Injection:
    """Like inject_documents, and also says what was injected, which Services and policies changed, what to check."""
    result = Injection(documents=[copy.deepcopy(d) for d in documents if d is not None])
    problems: list[str] = []
    objects: list[Manifest] = []
    for index, document in enumerate(result.documents):
        if not isinstance(document, dict):
            problems.append(f"document {index + 1}: not a Kubernetes object (a mapping), got {_type(document)}")
            continue
        objects.extend(_flatten(document))

    workloads: list[_Workload] = []
    for obj in objects:
        template = _pod_template(obj)
        if template is None or _controlled(obj):
            continue
        workload = _Workload(obj, template)
        workloads.append(workload)
        with _refusals(obj, problems):
            if _opted_in(obj, template, options):
                workload.agent_port, workload.proxy_port = _inject_workload(obj, template, options, result.notes)
                workload.injected = True
                result.injected.append(reference(obj))

    for obj in objects:
        with _refusals(obj, problems):
            if _is(obj, "", "Service"):
                _retarget_service(obj, workloads, result)
            elif _is(obj, "networking.k8s.io", "NetworkPolicy"):
                _open_network_policy(obj, [w for w in workloads if w.injected], result)
    if problems:
        raise InjectError(problems)
    return result


@contextlib.contextmanager
def _refusals(obj: Manifest, problems: list[str]) -> Iterator[None]:
    """Records what is wrong with one object, prefixed by its reference, and goes on with the next."""
    try:
        yield
    except _Refused as problem:
        problems.append(f"{reference(obj)}: {problem}")
    except (AttributeError, TypeError, KeyError, ValueError) as error:
        # A shape no API server would accept (a string where a list goes, …): say so rather than crash.
        problems.append(f"{reference(obj)}: malformed {obj.get('kind')} ({type(error).__name__}: {error})")


def reference(obj: Mapping[str, Any]) -> str:
    """`kind/namespace/name`, with `-` for a namespace the manifest leaves to kubectl or Helm."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    return f"{obj.get('kind', '?')}/{metadata.get('namespace') or '-'}/{metadata.get('name', '?')}"


# ---------------------------------------------------------------- finding workloads


def _flatten(document: Manifest) -> Iterator[Manifest]:
    """The objects of a document: itself, or the items of a `List` (kubectl get -o yaml) or KRM ResourceList."""
    kind = document.get("kind")
    items = document.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                yield from _flatten(item)
        return
    yield document


def _group(obj: Mapping[str, Any]) -> str:
    api_version = obj.get("apiVersion")
    return api_version.rpartition("/")[0] if isinstance(api_version, str) else ""


def _is(obj: Mapping[str, Any], group: str, kind: str) -> bool:
    return obj.get("kind") == kind and _group(obj) == group


def _pod_template(obj: Manifest) -> Manifest | None:
    path = POD_TEMPLATE_PATHS.get((_group(obj), str(obj.get("kind"))))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _controlled(obj: Manifest) -> bool:
    """A Deployment's ReplicaSet or a CronJob's Job (as `kubectl get -o yaml` lists them): its owner is injected."""
    return any(owner.get("controller") for owner in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _opted_in(obj: Manifest, template: Manifest, options: InjectOptions) -> bool:
    values = set()
    for metadata in (obj.get("metadata") or {}, template.get("metadata") or {}):
        for section in ("labels", "annotations"):
            value = (metadata.get(section) or {}).get(INJECT)
            if value is not None:
                if str(value).lower() not in ("true", "false"):
                    raise _Refused(f'{section[:-1]} {INJECT} must be "true" or "false", got {value!r}')
                values.add(str(value).lower())
    if "false" in values:
        return False
    return "true" in values or (options.all_workloads and obj.get("kind") in ALL_WORKLOADS_KINDS)


def _settings(obj: Manifest, template: Manifest) -> dict[str, str]:
    """The `rum-llmobs-proxy/*` annotations of the workload, overridden by those of its pod template."""
    found: dict[str, str] = {}
    for metadata in (obj.get("metadata") or {}, template.get("metadata") or {}):
        for key, value in (metadata.get("annotations") or {}).items():
            if key.startswith(PREFIX) and key != INJECT:
                if key not in ANNOTATIONS:
                    raise _Refused(f"unknown annotation {key} (known: {', '.join(ANNOTATIONS)})")
                found[key] = str(value)
    return found


# ---------------------------------------------------------------- one workload


def _inject_workload(
    obj: Manifest, template: Manifest, options: InjectOptions, notes: list[str]
) -> tuple[_AgentPort, int]:
    settings = _settings(obj, template)
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise _Refused("its pod template has no containers")
    extra_env = _parse_env(settings.get(ENV, ""))
    sources = settings.get(SOURCES)
    if sources is not None:
        unknown = [s for s in sources.split(",") if s.strip() not in KNOWN_SOURCES]
        if unknown or not sources.strip():
            raise _Refused(f"{SOURCES} {sources!r}: use a comma-separated list of {', '.join(KNOWN_SOURCES)}")
        extra_env = {"RUM_PROXY_SOURCES": ",".join(s.strip() for s in sources.split(",")), **extra_env}
    image = settings.get(IMAGE, options.image).strip()
    if not image or any(c.isspace() for c in image):
        raise _Refused(f"{IMAGE} {image!r} is not an image reference")
    if image == DEFAULT_IMAGE:
        notes.append(
            f"{reference(obj)}: image {image} is the default, which no registry publishes: build and push the "
            f"image, then pass --image or set {IMAGE}"
        )

    init_containers = [c for c in spec.get("initContainers") or [] if c.get("name") not in (HOOK, SIDECAR)]
    agent = _agent_container(spec, settings)
    agent_port = _agent_port(spec, agent, settings)
    taken = {agent_port.number} | {
        p.get("containerPort") for c in [*init_containers, *spec["containers"]] for p in c.get("ports") or []
    }
    taken_names = {p.get("name") for c in [*init_containers, *spec["containers"]] for p in c.get("ports") or []}
    for name in (PROXY_PORT_NAME, ADMIN_PORT_NAME):
        if name in taken_names:
            raise _Refused(f"a container already declares a port named {name!r}, which the proxy needs")
    proxy_port = _chosen_port(settings, PROXY_PORT, DEFAULT_PROXY_PORT, taken)
    admin_port = _chosen_port(settings, ADMIN_PORT, DEFAULT_ADMIN_PORT, taken | {proxy_port})

    header = extra_env.get("RUM_PROXY_SESSION_HEADER") or _plain_env(agent, "RUM_PROXY_SESSION_HEADER")
    header = header or DEFAULT_SESSION_HEADER
    if not _HEADER_NAME.fullmatch(header):
        raise _Refused(f"RUM_PROXY_SESSION_HEADER {header!r} is not a header name")
    drain = extra_env.get("RUM_PROXY_SHUTDOWN_GRACE_SECONDS", str(DEFAULT_DRAIN_SECONDS))
    if not drain.isdigit():
        raise _Refused(f"RUM_PROXY_SHUTDOWN_GRACE_SECONDS {drain!r} must be a whole number of seconds")

    _wire_agent(agent, header, notes, obj)
    metadata = _mapping(template, "metadata")
    labels = _mapping(metadata, "labels")
    labels[f"tags.datadoghq.com/{SIDECAR}.service"] = SIDECAR
    labels[f"tags.datadoghq.com/{SIDECAR}.version"] = _version_label(image)
    env = {
        "RUM_PROXY_UPSTREAM_URL": _value(f"http://127.0.0.1:{agent_port.number}"),
        "RUM_PROXY_PORT": _value(str(proxy_port)),
        "RUM_PROXY_ADMIN_PORT": _value(str(admin_port)),
        "RUM_PROXY_SESSION_HEADER": _value(header),
        "RUM_PROXY_SHUTDOWN_GRACE_SECONDS": _value(drain),
        "RUM_PROXY_LOG_FORMAT": _value("json"),
        **_unified_service_tags(labels),
        "DD_AGENT_HOST": _field("status.hostIP"),
    }
    env.update({name: _value(value) for name, value in extra_env.items()})
    _mapping(metadata, "annotations").update(_autodiscovery(admin_port))
    spec["initContainers"] = [
        _hook_copier(image),
        _sidecar(image, proxy_port, admin_port, [{"name": k, **v} for k, v in env.items()]),
        *init_containers,
    ]
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in (HOOK, TMP_VOLUME)]
    spec["volumes"] = [
        *volumes,
        {"name": HOOK, "emptyDir": {"sizeLimit": "1Mi"}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if spec.get("hostNetwork") is True:
        notes.append(
            f"{reference(obj)}: hostNetwork pod: the proxy's ports {proxy_port} and {admin_port} open on the node"
        )
    grace = spec.get("terminationGracePeriodSeconds", 30)
    spec["terminationGracePeriodSeconds"] = max(
        grace if isinstance(grace, int) else 30, int(drain) + AGENT_STOP_SECONDS
    )
    return agent_port, proxy_port


def _unified_service_tags(labels: Mapping[str, str]) -> dict[str, Manifest]:
    """DD_ENV/DD_SERVICE/DD_VERSION from pod labels; DD_ENV only when the pod has one (else it would be empty)."""
    tags = {"DD_ENV": _field("metadata.labels['tags.datadoghq.com/env']")} if "tags.datadoghq.com/env" in labels else {}
    tags["DD_SERVICE"] = _field(f"metadata.labels['tags.datadoghq.com/{SIDECAR}.service']")
    tags["DD_VERSION"] = _field(f"metadata.labels['tags.datadoghq.com/{SIDECAR}.version']")
    return tags


def _autodiscovery(admin_port: int) -> dict[str, str]:
    """Datadog Agent annotations for the sidecar: its JSON logs, and its Prometheus metrics on the admin port."""
    instance = {
        "openmetrics_endpoint": f"http://%%host%%:{admin_port}/metrics",
        "namespace": "rum_llmobs_proxy",
        "metrics": ["rum_proxy_.*"],
    }
    return {
        f"ad.datadoghq.com/{SIDECAR}.logs": _json([{"source": SIDECAR, "service": SIDECAR}]),
        f"ad.datadoghq.com/{SIDECAR}.checks": _json({"openmetrics": {"init_config": {}, "instances": [instance]}}),
    }


def _agent_container(spec: Manifest, settings: Mapping[str, str]) -> Manifest:
    containers: list[Manifest] = spec["containers"]
    names = [str(c.get("name")) for c in containers]
    wanted = settings.get(AGENT_CONTAINER)
    if wanted is not None:
        for container in containers:
            if container.get("name") == wanted:
                return container
        raise _Refused(f"{AGENT_CONTAINER} {wanted!r} is not one of its containers ({', '.join(names)})")
    if len(containers) == 1:
        return containers[0]
    raise _Refused(
        f"{len(containers)} containers ({', '.join(names)}): say which one is the agent with the annotation "
        f"{AGENT_CONTAINER}"
    )


def _agent_port(spec: Manifest, agent: Manifest, settings: Mapping[str, str]) -> _AgentPort:
    ports = [p for p in agent.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
    declared = [_AgentPort(p["containerPort"], p.get("name")) for p in ports if isinstance(p.get("containerPort"), int)]
    listing = ", ".join(p.describe() for p in declared) or "none"
    wanted = settings.get(AGENT_PORT)
    if wanted is not None:
        wanted = wanted.strip()
        if wanted.isdigit():
            number = int(wanted)
            if not 1 <= number <= 65535:
                raise _Refused(f"{AGENT_PORT} {wanted!r} is not a port number")
            owners = [
                str(c.get("name"))
                for c in [*(spec.get("initContainers") or []), *spec["containers"]]
                if c is not agent
                and c.get("name") not in (HOOK, SIDECAR)
                and any(p.get("containerPort") == number for p in c.get("ports") or [])
            ]
            if owners and number not in {p.number for p in declared}:
                raise _Refused(f"{AGENT_PORT} {number} is a port of container {owners[0]}, not of {agent.get('name')}")
            return next((p for p in declared if p.number == number), _AgentPort(number, None))
        for port in declared:
            if port.name == wanted:
                return port
        raise _Refused(f"{AGENT_PORT} {wanted!r} is not a TCP port of container {agent.get('name')} ({listing})")
    if len(declared) == 1:
        return declared[0]
    named_http = [p for p in declared if p.name == "http"]
    if len(named_http) == 1:
        return named_http[0]
    problem = "declares no TCP port" if not declared else f"has several TCP ports ({listing}) and none named http"
    raise _Refused(f"container {agent.get('name')} {problem}: set the annotation {AGENT_PORT} (a name or number)")


def _chosen_port(settings: Mapping[str, str], key: str, default: int, taken: set[Any]) -> int:
    wanted = settings.get(key)
    if wanted is None:
        port = default
        while port in taken:
            port += 1
        return port
    if not wanted.strip().isdigit() or not 1 <= int(wanted) <= 65535:
        raise _Refused(f"{key} {wanted!r} is not a port number")
    if int(wanted) in taken:
        raise _Refused(f"{key} {wanted} is already used in the pod")
    return int(wanted)


def _wire_agent(agent: Manifest, header: str, notes: list[str], obj: Manifest) -> None:
    env = _sequence(agent, "env")
    pythonpath = next((e for e in env if e.get("name") == "PYTHONPATH"), None)
    if pythonpath is None:
        env.append({"name": "PYTHONPATH", "value": HOOK_DIR})
        if agent.get("envFrom"):
            notes.append(
                f"{reference(obj)}: container {agent.get('name')} had no PYTHONPATH in env but uses envFrom; "
                f"PYTHONPATH={HOOK_DIR} now overrides any PYTHONPATH from there (add it to env to keep it)"
            )
    elif "valueFrom" in pythonpath:
        raise _Refused(
            f"container {agent.get('name')}: PYTHONPATH comes from valueFrom; make it a plain value so the hook "
            "can be appended (Datadog library injection refuses a valueFrom PYTHONPATH too)"
        )
    else:
        # Appended, so the image's own entries and /datadog-lib/ (which Datadog's admission controller prepends,
        # or a manifest already lists) stay in front: ddtrace's sitecustomize runs first and hands over to the hook.
        entries = [e for e in str(pythonpath.get("value", "")).split(":") if e and e.rstrip("/") != HOOK_DIR]
        pythonpath["value"] = ":".join([*entries, HOOK_DIR])
    _put(env, {"name": "RUM_PROXY_SESSION_HEADER", "value": header})
    mounts = _sequence(agent, "volumeMounts")
    for mount in mounts:
        if mount.get("mountPath", "").rstrip("/") == HOOK_DIR and mount.get("name") != HOOK:
            raise _Refused(f"container {agent.get('name')} already mounts volume {mount.get('name')} at {HOOK_DIR}")
    _put(mounts, {"name": HOOK, "mountPath": HOOK_DIR, "readOnly": True})


def _mapping(parent: Manifest, key: str) -> Manifest:
    """parent[key] as a mapping, created when absent or null (`labels:` with nothing under it)."""
    if parent.get(key) is None:
        parent[key] = {}
    value: Manifest = parent[key]
    return value


def _sequence(parent: Manifest, key: str) -> list[Manifest]:
    if parent.get(key) is None:
        parent[key] = []
    value: list[Manifest] = parent[key]
    return value


def _put(items: list[Manifest], entry: Manifest) -> None:
    """Replace the entry with the same name in place, or append it."""
    for index, item in enumerate(items):
        if item.get("name") == entry["name"]:
            items[index] = entry
            return
    items.append(entry)


def _plain_env(container: Manifest, name: str) -> str | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name and isinstance(entry.get("value"), str):
            return str(entry["value"])
    return None


def _parse_env(text: str) -> dict[str, str]:
    """`K=V,K=V` or a JSON object of strings, numbers or booleans."""
    text = text.strip()
    if not text:
        return {}
    pairs: dict[str, str] = {}
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise _Refused(f"{ENV} is not valid JSON: {error}") from None
        if not isinstance(loaded, dict):
            raise _Refused(f"{ENV} must be a JSON object")
        for name, value in loaded.items():
            if isinstance(value, bool):
                pairs[name] = str(value).lower()
            elif isinstance(value, str | int | float):
                pairs[name] = str(value)
            else:
                raise _Refused(f"{ENV}: {name} must be a string, number or boolean")
    else:
        for item in text.split(","):
            name, equals, value = item.strip().partition("=")
            if not equals:
                raise _Refused(f"{ENV}: {item.strip()!r} is not NAME=value (use a JSON object for values with commas)")
            pairs[name.strip()] = value.strip()
    for name in pairs:
        if not _ENV_NAME.fullmatch(name):
            raise _Refused(f"{ENV}: {name!r} is not an environment variable name")
        if name in MANAGED_ENV:
            raise _Refused(f"{ENV}: {name} is set by the injector (use {AGENT_PORT}, {PROXY_PORT} or {ADMIN_PORT})")
    return pairs


def _version_label(image: str) -> str:
    """The image's tag when it is one (and a valid label value), else this injector's version."""
    tag = _IMAGE_TAG.search(image.rpartition("/")[2].partition("@")[0])
    if tag and "@" not in image and len(tag.group(1)) <= 63 and _LABEL_VALUE.fullmatch(tag.group(1)):
        return tag.group(1)
    return __version__


def _value(value: str) -> Manifest:
    return {"value": value}


def _field(path: str) -> Manifest:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _type(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


# ---------------------------------------------------------------- containers


def _security_context() -> Manifest:
    """The Restricted Pod Security Standard, and a read-only root: the image writes nothing but /tmp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _hook_copier(image: str) -> Manifest:
    return {
        "name": HOOK,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp", "-R", f"{IMAGE_HOOK_DIR}/.", f"{HOOK_DIR}/"],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": HOOK, "mountPath": HOOK_DIR}],
    }


def _probe(path: str, period: int, failures: int, timeout: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": ADMIN_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _sidecar(image: str, proxy_port: int, admin_port: int, env: list[Manifest]) -> Manifest:
    return {
        "name": SIDECAR,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "ports": [
            {"name": PROXY_PORT_NAME, "containerPort": proxy_port, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": admin_port, "protocol": "TCP"},
        ],
        "env": env,
        # The agent starts once this passes; /healthz does no I/O and never depends on the agent.
        "startupProbe": _probe("/healthz", period=1, failures=30, timeout=1),
        "livenessProbe": _probe("/healthz", period=10, failures=3, timeout=2),
        # /readyz answers 503 while draining, which takes the pod out of the Service.
        "readinessProbe": _probe("/readyz", period=5, failures=2, timeout=2),
        # No CPU limit on purpose: CFS throttling adds latency to every proxied request. RSS under load ~67 MB.
        "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir of its own
    }


# ---------------------------------------------------------------- Services


def _selects(service: Manifest, workload: _Workload) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return False
    if (service.get("metadata") or {}).get("namespace") != (workload.obj.get("metadata") or {}).get("namespace"):
        return False
    labels = (workload.template.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def _retarget_service(service: Manifest, workloads: list[_Workload], result: Injection) -> None:
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
        raise _Refused(
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


def _open_network_policy(policy: Manifest, injected: list[_Workload], result: Injection) -> None:
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
