"""Building what goes into an opted-in pod: the proxy sidecar, the hook copier, their env, the agent's wiring."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from proxy import __version__
from proxy.inject.model import (
    ADMIN_PORT,
    ADMIN_PORT_NAME,
    AGENT_STOP_SECONDS,
    DEFAULT_ADMIN_PORT,
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_IMAGE,
    DEFAULT_PROXY_PORT,
    DEFAULT_SESSION_HEADER,
    ENV,
    HOOK,
    HOOK_DIR,
    IMAGE,
    IMAGE_HOOK_DIR,
    IMAGE_PYTHONPATH,
    KNOWN_SOURCES,
    PROXY_PORT,
    PROXY_PORT_NAME,
    SIDECAR,
    SOURCES,
    TMP_VOLUME,
    AgentPort,
    Injection,
    InjectOptions,
    Manifest,
    Refused,
    mapping,
    put,
    reference,
    sequence,
)
from proxy.inject.select import (
    annotation_settings,
    choose_agent_container,
    choose_agent_port,
    choose_port,
    parse_env,
)

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_IMAGE_TAG = re.compile(r":([\w][\w.-]{0,127})$")


def inject_workload(
    obj: Manifest, template: Manifest, options: InjectOptions, result: Injection
) -> tuple[AgentPort, int]:
    settings = annotation_settings(obj, template)
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise Refused("its pod template has no containers")
    extra_env = parse_env(settings.get(ENV, ""))
    sources = settings.get(SOURCES)
    if sources is not None:
        unknown = [s for s in sources.split(",") if s.strip() not in KNOWN_SOURCES]
        if unknown or not sources.strip():
            raise Refused(f"{SOURCES} {sources!r}: use a comma-separated list of {', '.join(KNOWN_SOURCES)}")
        extra_env = {"RUM_PROXY_SOURCES": ",".join(s.strip() for s in sources.split(",")), **extra_env}
    chosen = settings.get(IMAGE, options.image)
    if chosen is None:
        unpublished = (
            f"image {DEFAULT_IMAGE} is the default, which no registry publishes: build and push the image, then "
            f"pass --image or set the annotation {IMAGE}"
        )
        if options.require_image:
            raise Refused(unpublished)
        result.notes.append(f"{reference(obj)}: {unpublished}")
    image = (chosen or DEFAULT_IMAGE).strip()
    if not image or any(c.isspace() for c in image):
        raise Refused(f"{IMAGE} {image!r} is not an image reference")

    init_containers = [c for c in spec.get("initContainers") or [] if c.get("name") not in (HOOK, SIDECAR)]
    agent = choose_agent_container(spec, settings)
    agent_port = choose_agent_port(spec, agent, settings)
    taken = {agent_port.number} | {
        p.get("containerPort") for c in [*init_containers, *spec["containers"]] for p in c.get("ports") or []
    }
    taken_names = {p.get("name") for c in [*init_containers, *spec["containers"]] for p in c.get("ports") or []}
    for name in (PROXY_PORT_NAME, ADMIN_PORT_NAME):
        if name in taken_names:
            raise Refused(f"a container already declares a port named {name!r}, which the proxy needs")
    proxy_port = choose_port(settings, PROXY_PORT, DEFAULT_PROXY_PORT, taken)
    admin_port = choose_port(settings, ADMIN_PORT, DEFAULT_ADMIN_PORT, taken | {proxy_port})

    header = extra_env.get("RUM_PROXY_SESSION_HEADER") or _plain_env(agent, "RUM_PROXY_SESSION_HEADER")
    header = header or DEFAULT_SESSION_HEADER
    if not _HEADER_NAME.fullmatch(header):
        raise Refused(f"RUM_PROXY_SESSION_HEADER {header!r} is not a header name")
    drain = extra_env.get("RUM_PROXY_SHUTDOWN_GRACE_SECONDS", str(DEFAULT_DRAIN_SECONDS))
    if not drain.isdigit():
        raise Refused(f"RUM_PROXY_SHUTDOWN_GRACE_SECONDS {drain!r} must be a whole number of seconds")

    _wire_agent(agent, header, settings.get(IMAGE_PYTHONPATH), result, obj)
    metadata = mapping(template, "metadata")
    labels = mapping(metadata, "labels")
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
    mapping(metadata, "annotations").update(_autodiscovery(admin_port))
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
        result.notes.append(
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
    """Datadog Agent annotations for the sidecar: its JSON logs, and its Prometheus metrics on the admin port
    (named as deploy/datadog/README.md lists them: rum_llmobs_proxy.requests.count, ...)."""
    instance = {
        "openmetrics_endpoint": f"http://%%host%%:{admin_port}/metrics",
        "namespace": "rum_llmobs_proxy",
        # rum_proxy_requests_total -> rum_llmobs_proxy.requests.count, not rum_llmobs_proxy.rum_proxy_requests.count
        "raw_metric_prefix": "rum_proxy_",
        # Exact names (no regex): the _created series prometheus-client adds in single-process mode are not sent.
        "metrics": [
            "requests",
            "invalid_session_ids",
            "upstream_errors",
            "bad_requests",
            "request_duration_seconds",
            "open_streams",
            "open_websockets",
        ],
        # The duration histogram as a distribution (p50/p95/p99 queries), plus .count/.sum monotonic counts:
        # .count has no labels, so it is submitted (0) even before a proxy's first request (the no-traffic monitor).
        "histogram_buckets_as_distributions": True,
        "collect_counters_with_distributions": True,
        # The endpoint tag is the pod IP; pod_name says the same and matches the dashboard's template variable.
        # The Agent's tagger leaves pod_name out at its default DD_CHECKS_TAG_CARDINALITY=low.
        "tag_by_endpoint": False,
        "tags": ["pod_name:%%kube_pod_name%%"],
    }
    return {
        f"ad.datadoghq.com/{SIDECAR}.logs": _json([{"source": SIDECAR, "service": SIDECAR}]),
        f"ad.datadoghq.com/{SIDECAR}.checks": _json({"openmetrics": {"init_config": {}, "instances": [instance]}}),
    }


def _wire_agent(agent: Manifest, header: str, image_path: str | None, result: Injection, obj: Manifest) -> None:
    env = sequence(agent, "env")
    pythonpath = next((e for e in env if e.get("name") == "PYTHONPATH"), None)
    name = agent.get("name")
    if pythonpath is None:
        pythonpath = {"name": "PYTHONPATH", "value": image_path or ""}
        env.append(pythonpath)
        if image_path is None:
            # Kubernetes' env replaces the image's ENV PYTHONPATH (and any from envFrom), which a manifest cannot show.
            result.warnings.append(
                f"{reference(obj)}: container {name} sets no PYTHONPATH, so PYTHONPATH={HOOK_DIR} replaces any "
                f"PYTHONPATH its image sets (ENV PYTHONPATH=/app is common) and the agent may no longer import its "
                f"own code; state the image's value with the annotation {IMAGE_PYTHONPATH} (empty when it has "
                f"none), or add it to the container's env"
                + (", where it also overrides envFrom" if agent.get("envFrom") else "")
            )
    elif "valueFrom" in pythonpath:
        raise Refused(
            f"container {name}: PYTHONPATH comes from valueFrom; make it a plain value so the hook can be added "
            "(Datadog library injection refuses a valueFrom PYTHONPATH too)"
        )
    elif image_path is not None:
        if str(pythonpath.get("value") or "").split(":")[0] != HOOK_DIR:
            raise Refused(
                f"{IMAGE_PYTHONPATH} is set but container {name} has PYTHONPATH in its env, which is what the agent "
                "sees: drop one of them"
            )
        pythonpath["value"] = image_path  # what an earlier run wrote from the annotation: the annotation again
    pythonpath["value"] = pythonpath_with_hook(str(pythonpath.get("value") or ""))
    put(env, {"name": "RUM_PROXY_SESSION_HEADER", "value": header})
    mounts = sequence(agent, "volumeMounts")
    for mount in mounts:
        if mount.get("mountPath", "").rstrip("/") == HOOK_DIR and mount.get("name") != HOOK:
            raise Refused(f"container {agent.get('name')} already mounts volume {mount.get('name')} at {HOOK_DIR}")
    put(mounts, {"name": HOOK, "mountPath": HOOK_DIR, "readOnly": True})


def _plain_env(container: Manifest, name: str) -> str | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name and isinstance(entry.get("value"), str):
            return str(entry["value"])
    return None


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
        # No startupProbe: with one, the kubelet starts the agent only once it passes, adding up to a probe period
        # to every pod's start, and the agent never needs the proxy to start (traffic enters once the pod is Ready,
        # which needs both). Liveness allows 20-30 s to start; /healthz does no I/O, never depends on the agent.
        "livenessProbe": _probe("/healthz", period=10, failures=3, timeout=2),
        # /readyz answers 503 while draining, which takes the pod out of the Service. Every second: the pod is
        # Ready within a second of the later of its two containers (issue 20); 3 failures of 2 s each, as the admin
        # port shares the event loop with the traffic, so a busy second does not take the pod out.
        "readinessProbe": _probe("/readyz", period=1, failures=3, timeout=2),
        # No CPU limit on purpose: CFS throttling adds latency to every proxied request. Memory (bench/startup.py,
        # deploy/README.md): RSS 43 MB idle, 44 MB under 50 connections, 52 MB with 1,000 streams open.
        "resources": {"requests": {"cpu": "100m", "memory": "80Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir of its own
    }


# ---------------------------------------------------------------- Services


def pythonpath_with_hook(value: str) -> str:
    """The hook directory first, then every entry as it was, empty ones included: Python reads an empty entry as
    the working directory. First, because the hook's sitecustomize runs the next one on sys.path (as ddtrace's
    does): an image's own sitecustomize or /datadog-lib/ after it still runs, while one in front of it would hide
    it. An empty value has no entries (not one empty entry)."""
    entries = value.split(":") if value else []
    return ":".join([HOOK_DIR, *(e for e in entries if e.rstrip("/") != HOOK_DIR)])
