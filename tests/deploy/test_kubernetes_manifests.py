"""Renders every kustomization under deploy/kubernetes, validates it offline and checks the sidecar wiring."""

from __future__ import annotations

import copy
import json
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from conftest import KUBERNETES_DIR, REPO_ROOT, Render

Doc = dict[str, Any]

# Native sidecars (initContainers[].restartPolicy: Always) are stable from 1.33.
KUBERNETES_VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
INJECT_LABEL = ("rum-llmobs-proxy/inject", "true")
SIDECAR = "rum-llmobs-proxy"
HOOK_COPIER = "rum-llmobs-hook"
HOOK_IMAGE_DIR = "/opt/rum-llmobs-hook"
# Time the agent container gets to stop before the sidecar's own drain starts (same grace period).
GRACE_MARGIN_SECONDS = 10

KUSTOMIZATIONS = sorted(p.parent for p in KUBERNETES_DIR.rglob("kustomization.yaml"))
BUILDABLE = [p for p in KUSTOMIZATIONS if "kind: Component" not in (p / "kustomization.yaml").read_text()]


# ---------------------------------------------------------------- helpers


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _by_name(items: list[Doc], name: str) -> Doc:
    found = [i for i in items if i["name"] == name]
    assert len(found) == 1, f"expected one entry named {name!r} in {[i['name'] for i in items]}"
    return found[0]


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _config_map_data(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The env a container gets from envFrom ConfigMaps, overridden by its own `env` values."""
    data: dict[str, str] = {}
    for source in container.get("envFrom", []):
        data.update(_one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    data.update({k: v["value"] for k, v in _env(container).items() if "value" in v})
    return data


def _port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(_by_name(container["ports"], port)["containerPort"])


def _injected(docs: list[Doc]) -> list[Doc]:
    return [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"].get("labels", {}).get(INJECT_LABEL[0]) == INJECT_LABEL[1]
    ]


def _agent_container(pod: Doc) -> Doc:
    """The container that mounts the hook: the Python agent."""
    mounting = [c for c in pod["containers"] if any(m["name"] == HOOK_COPIER for m in c.get("volumeMounts", []))]
    assert len(mounting) == 1, "exactly one app container must mount the hook volume"
    return mounting[0]


# ---------------------------------------------------------------- checks (raise AssertionError)


def check_native_sidecar(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        pod = deployment["spec"]["template"]["spec"]
        names = [c["name"] for c in pod.get("initContainers", [])]
        assert SIDECAR in names and HOOK_COPIER in names, names
        sidecar = _by_name(pod["initContainers"], SIDECAR)
        copier = _by_name(pod["initContainers"], HOOK_COPIER)
        assert sidecar.get("restartPolicy") == "Always", "the proxy must be a native sidecar"
        assert "restartPolicy" not in copier, "the hook copier must run to completion"
        assert names.index(HOOK_COPIER) < names.index(SIDECAR)
        assert copier["image"] == sidecar["image"], "one image serves both roles"
        assert SIDECAR not in [c["name"] for c in pod["containers"]]


def check_probes(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        sidecar = _by_name(deployment["spec"]["template"]["spec"]["initContainers"], SIDECAR)
        admin_port = int(_config_map_data(docs, sidecar).get("RUM_PROXY_ADMIN_PORT", "8081"))
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe_name, path in expected.items():
            probe = sidecar.get(probe_name)
            assert probe is not None, f"{probe_name} missing"
            assert probe["httpGet"]["path"] == path, probe_name
            assert _port_number(sidecar, probe["httpGet"]["port"]) == admin_port, probe_name


def _check_container_restricted(container: Doc, pod_context: Doc) -> None:
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


def check_restricted_pod_security(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        pod = deployment["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        for container in pod.get("initContainers", []) + pod["containers"]:
            _check_container_restricted(container, pod_context)
        for name in (SIDECAR, HOOK_COPIER):
            context = _by_name(pod["initContainers"], name)["securityContext"]
            assert context.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
            assert context.get("runAsNonRoot") is True, f"{name}: own runAsNonRoot"
            assert "resources" in _by_name(pod["initContainers"], name), f"{name}: resources"


def check_hook_wiring(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        pod = deployment["spec"]["template"]["spec"]
        volume = _by_name(pod["volumes"], HOOK_COPIER)
        assert "emptyDir" in volume, "the hook lives in an emptyDir"
        copier = _by_name(pod["initContainers"], HOOK_COPIER)
        copier_mount = _by_name(copier["volumeMounts"], HOOK_COPIER)["mountPath"]
        assert copier["command"] == ["cp", "-R", f"{HOOK_IMAGE_DIR}/.", f"{copier_mount}/"]
        agent = _agent_container(pod)
        agent_mount = _by_name(agent["volumeMounts"], HOOK_COPIER)
        assert agent_mount.get("readOnly") is True
        pythonpath = _env(agent).get("PYTHONPATH")
        assert pythonpath is not None and "value" in pythonpath, (
            "PYTHONPATH must be a plain value (Datadog library injection rejects valueFrom)"
        )
        entries = pythonpath["value"].split(":")
        assert agent_mount["mountPath"] in entries, f"{agent_mount['mountPath']} not in PYTHONPATH"
        if any(e.rstrip("/") == "/datadog-lib" for e in entries):
            datadog_lib = next(i for i, e in enumerate(entries) if e.rstrip("/") == "/datadog-lib")
            assert datadog_lib < entries.index(agent_mount["mountPath"]), "ddtrace must load first"
        # The agent and the proxy must agree on the forwarded header's name.
        header = _env(agent).get("RUM_PROXY_SESSION_HEADER")
        assert header is not None, "agent needs RUM_PROXY_SESSION_HEADER for the hook"
        sidecar = _by_name(pod["initContainers"], SIDECAR)
        if "valueFrom" in header:
            ref = header["valueFrom"]["configMapKeyRef"]
            agent_value = _one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            agent_value = header["value"]
        proxy_value = _config_map_data(docs, sidecar).get("RUM_PROXY_SESSION_HEADER", "x-rum-session-id")
        assert agent_value == proxy_value


def check_proxy_env(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        template = deployment["spec"]["template"]
        sidecar = _by_name(template["spec"]["initContainers"], SIDECAR)
        config = _config_map_data(docs, sidecar)
        upstream = config.get("RUM_PROXY_UPSTREAM_URL", "")
        assert re.fullmatch(r"http://(127\.0\.0\.1|localhost):\d+/?", upstream), (
            f"the upstream is the agent in the same pod, got {upstream!r}"
        )
        upstream_port = int(upstream.rstrip("/").rsplit(":", 1)[1])
        agent_ports = [p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])]
        if agent_ports:
            assert upstream_port in agent_ports, "RUM_PROXY_UPSTREAM_URL must name an agent port"
        own_ports = {p["containerPort"] for p in sidecar["ports"]}
        assert upstream_port not in own_ports
        assert int(config.get("RUM_PROXY_PORT", "8080")) in own_ports
        assert int(config.get("RUM_PROXY_ADMIN_PORT", "8081")) in own_ports
        labels = template["metadata"]["labels"]
        for var in ("DD_ENV", "DD_SERVICE", "DD_VERSION"):
            field = _env(sidecar)[var]["valueFrom"]["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", field)
            assert label is not None and label.group(1).startswith("tags.datadoghq.com/"), field
            assert label.group(1) in labels, f"{var} points at missing pod label {label.group(1)}"
        for tag in ("env", "service", "version"):
            assert f"tags.datadoghq.com/{tag}" in deployment["metadata"]["labels"], tag


def check_service_targets_proxy(docs: list[Doc]) -> None:
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"].get("labels", {}).get(INJECT_LABEL[0])]
    assert services, "no Service is routed through the proxy"
    for service in services:
        selector = service["spec"]["selector"]
        backends = [
            d for d in _injected(docs) if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert backends, f"Service {service['metadata']['name']} selects no injected Deployment"
        for deployment in backends:
            sidecar = _by_name(deployment["spec"]["template"]["spec"]["initContainers"], SIDECAR)
            proxy_port = int(_config_map_data(docs, sidecar).get("RUM_PROXY_PORT", "8080"))
            for port in service["spec"]["ports"][:1]:
                target = port.get("targetPort", port["port"])
                assert _port_number(sidecar, target) == proxy_port, "Service must target the proxy"


def check_grace_period(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        pod = deployment["spec"]["template"]["spec"]
        sidecar = _by_name(pod["initContainers"], SIDECAR)
        drain = int(_config_map_data(docs, sidecar).get("RUM_PROXY_SHUTDOWN_GRACE_SECONDS", "25"))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace >= drain + GRACE_MARGIN_SECONDS, f"grace {grace}s < drain {drain}s + margin"


def check_autodiscovery(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        container_names = {
            c["name"] for c in template["spec"]["containers"] + template["spec"].get("initContainers", [])
        }
        for key in annotations:
            if key.startswith("ad.datadoghq.com/") and "." in key.split("/", 1)[1]:
                assert key.split("/", 1)[1].rsplit(".", 1)[0] in container_names, key
        logs = json.loads(annotations[f"ad.datadoghq.com/{SIDECAR}.logs"])
        assert logs[0]["source"] and logs[0]["service"]
        checks = json.loads(annotations[f"ad.datadoghq.com/{SIDECAR}.checks"])
        instance = checks["openmetrics"]["instances"][0]
        sidecar = _by_name(template["spec"]["initContainers"], SIDECAR)
        admin_port = _config_map_data(docs, sidecar).get("RUM_PROXY_ADMIN_PORT", "8081")
        assert instance["openmetrics_endpoint"] == f"http://%%host%%:{admin_port}/metrics"
        assert any(re.fullmatch(p, "rum_proxy_requests_total") for p in instance["metrics"])


ALL_CHECKS: list[Callable[[list[Doc]], None]] = [
    check_native_sidecar,
    check_probes,
    check_restricted_pod_security,
    check_hook_wiring,
    check_proxy_env,
    check_service_targets_proxy,
    check_grace_period,
    check_autodiscovery,
]


# ---------------------------------------------------------------- tests


def test_every_kustomization_is_covered() -> None:
    names = {p.relative_to(KUBERNETES_DIR).as_posix() for p in KUSTOMIZATIONS}
    assert {"base", "components/rum-llmobs-proxy", "example"} <= names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", BUILDABLE, ids=lambda p: p.relative_to(KUBERNETES_DIR).as_posix())
def test_renders_and_validates(render: Render, path: Path, version: str) -> None:
    docs = render(path)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {error.message} "
                f"at {'.'.join(map(str, error.path))}"
            ) from error


@pytest.fixture(scope="module")
def example(render: Render) -> list[Doc]:
    return render(KUBERNETES_DIR / "example")


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_example_overlay(example: list[Doc], check: Callable[[list[Doc]], None]) -> None:
    assert _injected(example), "the example Deployment is not opted in"
    check(example)


def test_example_namespace_enforces_restricted(example: list[Doc]) -> None:
    namespace = _one(example, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in example if d["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


def test_example_uses_the_image_override(example: list[Doc]) -> None:
    pod = _injected(example)[0]["spec"]["template"]["spec"]
    assert _by_name(pod["initContainers"], SIDECAR)["image"] == "registry.example.com/rum-llmobs-proxy:0.1.0"


def _break(path: str, change: Callable[[Doc], None]) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        for doc in _injected(docs) if path == "deployment" else docs:
            change(doc)

    return mutate


def _sidecar_of(doc: Doc) -> Doc:
    return _by_name(doc["spec"]["template"]["spec"]["initContainers"], SIDECAR)


def _set_config(docs: list[Doc], key: str, value: str) -> None:
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            doc["data"][key] = value


def _proxy_header_differs(docs: list[Doc]) -> None:
    for deployment in _injected(docs):
        _sidecar_of(deployment)["env"].append({"name": "RUM_PROXY_SESSION_HEADER", "value": "x-other"})


def _metrics_scraped_on_proxy_port(docs: list[Doc]) -> None:
    instance = {"openmetrics_endpoint": "http://%%host%%:8080/metrics", "metrics": [".*"]}
    for deployment in _injected(docs):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        annotations[f"ad.datadoghq.com/{SIDECAR}.checks"] = json.dumps({"openmetrics": {"instances": [instance]}})


BREAKAGES: dict[str, tuple[Callable[[list[Doc]], None], Callable[[list[Doc]], None]]] = {
    "sidecar-not-restartable": (
        _break("deployment", lambda d: _sidecar_of(d).pop("restartPolicy")),
        check_native_sidecar,
    ),
    "liveness-on-readyz": (
        _break("deployment", lambda d: _sidecar_of(d)["livenessProbe"]["httpGet"].update(path="/readyz")),
        check_probes,
    ),
    "probe-on-proxy-port": (
        _break("deployment", lambda d: _sidecar_of(d)["readinessProbe"]["httpGet"].update(port=8080)),
        check_probes,
    ),
    "writable-root": (
        _break("deployment", lambda d: _sidecar_of(d)["securityContext"].pop("readOnlyRootFilesystem")),
        check_restricted_pod_security,
    ),
    "capabilities-kept": (
        _break("deployment", lambda d: _sidecar_of(d)["securityContext"].pop("capabilities")),
        check_restricted_pod_security,
    ),
    "pythonpath-missing-hook": (
        _break(
            "deployment",
            lambda d: _agent_container(d["spec"]["template"]["spec"])["env"].__setitem__(
                0, {"name": "PYTHONPATH", "value": "/app"}
            ),
        ),
        check_hook_wiring,
    ),
    "hook-before-datadog-lib": (
        _break(
            "deployment",
            lambda d: _env(_agent_container(d["spec"]["template"]["spec"]))["PYTHONPATH"].update(
                value="/rum-llmobs-hook:/datadog-lib/"
            ),
        ),
        check_hook_wiring,
    ),
    "header-mismatch": (_proxy_header_differs, check_hook_wiring),
    "upstream-not-local": (
        lambda docs: _set_config(docs, "RUM_PROXY_UPSTREAM_URL", "http://llm-agent:80"),
        check_proxy_env,
    ),
    "upstream-is-proxy": (
        lambda docs: _set_config(docs, "RUM_PROXY_UPSTREAM_URL", "http://127.0.0.1:8080"),
        check_proxy_env,
    ),
    "service-to-agent": (
        _break("all", lambda d: d["kind"] == "Service" and d["spec"]["ports"][0].update(targetPort="http")),
        check_service_targets_proxy,
    ),
    "grace-too-short": (
        _break("deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30)),
        check_grace_period,
    ),
    "drain-too-long": (
        lambda docs: _set_config(docs, "RUM_PROXY_SHUTDOWN_GRACE_SECONDS", "55"),
        check_grace_period,
    ),
    "metrics-on-proxy-port": (_metrics_scraped_on_proxy_port, check_autodiscovery),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=str)
def test_checks_catch_a_broken_manifest(example: list[Doc], breakage: str) -> None:
    mutate, check = BREAKAGES[breakage]
    docs = copy.deepcopy(example)
    check(docs)
    mutate(docs)
    with pytest.raises(AssertionError):
        check(docs)


FOREIGN_APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {labels}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}, tags.datadoghq.com/env: prod, tags.datadoghq.com/service: {name},
               tags.datadoghq.com/version: "2"}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 2000, seccompProfile: {{type: RuntimeDefault}}}}
      initContainers:
        - name: migrate
          image: example/migrate:1
          securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
      containers:
        - name: main
          image: example/{name}:2
          securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"""


def test_component_applies_to_any_labelled_deployment(render: Render, tmp_path: Path) -> None:
    """A Deployment with no env, volumes or ports and an init container of its own, plus an opted-out one."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "apps.yaml").write_text(
        FOREIGN_APP.format(name="bot", labels="{rum-llmobs-proxy/inject: 'true'}")
        + "---\n"
        + FOREIGN_APP.format(name="other", labels="{team: x}")
    )
    (overlay / "agent-patch.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: bot}
            spec:
              template:
                spec:
                  containers:
                    - name: main
                      env:
                        - {name: PYTHONPATH, value: "/datadog-lib/:/rum-llmobs-hook"}
                        - name: RUM_PROXY_SESSION_HEADER
                          valueFrom:
                            configMapKeyRef: {name: rum-llmobs-proxy, key: RUM_PROXY_SESSION_HEADER}
                      volumeMounts:
                        - {name: rum-llmobs-hook, mountPath: /rum-llmobs-hook, readOnly: true}
            """
        )
    )
    # kustomize refuses absolute paths to other kustomizations.
    relative_to_overlay = Path(os.path.relpath(KUBERNETES_DIR, overlay))
    (overlay / "kustomization.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: kustomize.config.k8s.io/v1beta1
            kind: Kustomization
            resources: [apps.yaml, {relative_to_overlay / "base"}]
            components: [{relative_to_overlay / "components" / "rum-llmobs-proxy"}]
            patches: [{{path: agent-patch.yaml}}]
            """
        )
    )
    docs = render(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    bot = _one(docs, "Deployment", "bot")
    # kustomize's strategic merge puts the patch's init containers before the existing ones:
    # the proxy is up before the app's own init containers run, and theirs are kept.
    assert [c["name"] for c in bot["spec"]["template"]["spec"]["initContainers"]] == [
        HOOK_COPIER,
        SIDECAR,
        "migrate",
    ]
    for check in (
        check_native_sidecar,
        check_probes,
        check_restricted_pod_security,
        check_hook_wiring,
        check_grace_period,
        check_autodiscovery,
    ):
        check(docs)
    other = _one(docs, "Deployment", "other")
    assert [c["name"] for c in other["spec"]["template"]["spec"]["initContainers"]] == ["migrate"]
    assert "volumes" not in other["spec"]["template"]["spec"]


def test_readme_snippet_names_real_paths() -> None:
    guide = (REPO_ROOT / "deploy" / "README.md").read_text()
    for path in ("deploy/kubernetes/base", "deploy/kubernetes/components/rum-llmobs-proxy"):
        assert path in guide
        assert (REPO_ROOT / path / "kustomization.yaml").is_file()
