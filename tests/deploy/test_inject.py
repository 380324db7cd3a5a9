"""`proxy.inject` on realistic manifests: every output validated and checked, each check proven to fail on a
broken copy, the per-fixture behaviour a user would see, idempotence, and every refusal naming its object."""

from __future__ import annotations

import copy
import functools
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
from checks import (
    ALL_CHECKS,
    SUPPORTED_VERSIONS,
    Check,
    Doc,
    agent_of,
    by_name,
    check_app_containers_kept,
    check_autodiscovery,
    check_grace_period,
    check_hook_wiring,
    check_native_sidecar,
    check_network_policies,
    check_others_unchanged,
    check_probes,
    check_proxy_env,
    check_restricted_pod_security,
    check_service_ports,
    check_valid,
    check_workload_outside_pod_kept,
    env_of,
    injected,
    objects,
    ref,
    resolve_port,
    selects,
    sidecar_of,
    template_of,
)

from proxy import __version__
from proxy.inject import InjectError, InjectOptions, inject, inject_documents
from proxy.inject_cli import dump_manifests, load_manifests

FIXTURES = Path(__file__).parent / "fixtures"
INJECTABLE = [
    "chart.yaml",
    "library-injection.yaml",
    "statefulset.yaml",
    "list.yaml",
    "batch.yaml",
    "component-injected.yaml",
    "anchors.yaml",
]
IMAGE = "registry.example.com/rum-llmobs-proxy:0.1.0"
OPTIONS = InjectOptions(image=IMAGE)


def load(name: str) -> list[Doc]:
    return load_manifests((FIXTURES / name).read_text())


@functools.cache
def _injected_fixture(name: str, all_workloads: bool) -> list[Doc]:
    return inject_documents(load(name), InjectOptions(image=IMAGE, all_workloads=all_workloads))


def injected_fixture(name: str, *, all_workloads: bool = False) -> list[Doc]:
    return copy.deepcopy(_injected_fixture(name, all_workloads))


def find(docs: list[Doc], reference: str) -> Doc:
    return next(o for o in objects(docs) if ref(o) == reference)


def env_value(container: Doc, name: str) -> str:
    return str(env_of(container)[name]["value"])


# ---------------------------------------------------------------- every fixture passes every check


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fixture", INJECTABLE)
def test_injected_fixture_passes(fixture: str, check: Check) -> None:
    check(load(fixture), injected_fixture(fixture))


@pytest.mark.parametrize("fixture", [*INJECTABLE, "passthrough.yaml"])
def test_injecting_twice_equals_once(fixture: str) -> None:
    once = injected_fixture(fixture, all_workloads=True)
    assert inject_documents(once, InjectOptions(image=IMAGE, all_workloads=True)) == once
    text = dump_manifests(once)
    again = dump_manifests(inject_documents(load_manifests(text), InjectOptions(image=IMAGE, all_workloads=True)))
    assert again == text, "the written text itself is stable"


def test_input_is_not_modified() -> None:
    documents = load("chart.yaml")
    inject_documents(documents, OPTIONS)
    assert documents == load("chart.yaml")


# ---------------------------------------------------------------- checks fail on broken copies


def _on(reference: str, change: Callable[[Doc], None]) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        change(find(docs, reference))

    return mutate


BOT = "Deployment/-/support-bot"


def _sidecar_env(obj: Doc, name: str, value: str) -> None:
    env_of(sidecar_of(obj))[name]["value"] = value


def _double_sidecar(obj: Doc) -> None:
    init = template_of(obj)["spec"]["initContainers"]  # type: ignore[index]
    init.append(copy.deepcopy(init[1]))


def _admin_port_on_metrics(obj: Doc) -> None:
    by_name(sidecar_of(obj)["ports"], "rum-proxy-admin")["containerPort"] = 9090
    _sidecar_env(obj, "RUM_PROXY_ADMIN_PORT", "9090")


def _ad_on_proxy_port(obj: Doc) -> None:
    instance = {"openmetrics_endpoint": "http://%%host%%:8080/metrics", "metrics": [".*"]}
    annotations = template_of(obj)["metadata"]["annotations"]  # type: ignore[index]
    annotations["ad.datadoghq.com/rum-llmobs-proxy.checks"] = json.dumps({"openmetrics": {"instances": [instance]}})


def _service_port(reference: str, index: int, target: str | int) -> Callable[[list[Doc]], None]:
    return _on(reference, lambda s: s["spec"]["ports"][index].update(targetPort=target))


OWN_INIT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: bot, labels: {rum-llmobs-proxy/inject: "true"}}
spec:
  selector: {matchLabels: {app: bot}}
  template:
    metadata: {labels: {app: bot}}
    spec:
      initContainers: [{name: migrate, image: example/migrate:1}]
      containers: [{name: main, image: example/bot:2, ports: [{containerPort: 8000}]}]
"""


def _drop_own_init_container(docs: list[Doc]) -> None:
    del template_of(docs[0])["spec"]["initContainers"][2]  # type: ignore[index]


def source(fixture: str) -> list[Doc]:
    """A fixture file's documents, or inline YAML."""
    return load_manifests(fixture) if "\n" in fixture else load(fixture)


# name -> (fixture, mutation of its good output, the check that must catch it)
BREAKAGES: dict[str, tuple[str, Callable[[list[Doc]], None], Check]] = {
    "unknown-field": ("chart.yaml", _on(BOT, lambda d: sidecar_of(d).update(restartPolicyy="Always")), check_valid),
    "bad-type": ("chart.yaml", _on(BOT, lambda d: sidecar_of(d)["ports"][0].update(containerPort="8080")), check_valid),
    "sidecar-not-restartable": (
        "chart.yaml",
        _on(BOT, lambda d: sidecar_of(d).pop("restartPolicy")),
        check_native_sidecar,
    ),
    "sidecar-doubled": ("chart.yaml", _on(BOT, _double_sidecar), check_native_sidecar),
    "own-init-container-lost": (OWN_INIT, _drop_own_init_container, check_native_sidecar),
    "liveness-on-readyz": (
        "chart.yaml",
        _on(BOT, lambda d: sidecar_of(d)["livenessProbe"]["httpGet"].update(path="/readyz")),
        check_probes,
    ),
    "probe-on-proxy-port": (
        "chart.yaml",
        _on(BOT, lambda d: sidecar_of(d)["readinessProbe"]["httpGet"].update(port="rum-proxy")),
        check_probes,
    ),
    "writable-root": (
        "chart.yaml",
        _on(BOT, lambda d: sidecar_of(d)["securityContext"].pop("readOnlyRootFilesystem")),
        check_restricted_pod_security,
    ),
    "capabilities-kept": (
        "chart.yaml",
        _on(BOT, lambda d: sidecar_of(d)["securityContext"].pop("capabilities")),
        check_restricted_pod_security,
    ),
    "pythonpath-missing-hook": (
        "chart.yaml",
        _on(BOT, lambda d: env_of(agent_of(d))["PYTHONPATH"].update(value="/app/src")),
        check_hook_wiring,
    ),
    "image-pythonpath-dropped": (
        "chart.yaml",
        _on(BOT, lambda d: env_of(agent_of(d))["PYTHONPATH"].update(value="/rum-llmobs-hook")),
        check_hook_wiring,
    ),
    "hook-not-first": (
        "chart.yaml",
        _on(BOT, lambda d: env_of(agent_of(d))["PYTHONPATH"].update(value="/app/src:/rum-llmobs-hook")),
        check_hook_wiring,
    ),
    "empty-entry-dropped": (
        "anchors.yaml",
        _on(
            "Deployment/agents/planner",
            lambda d: env_of(agent_of(d))["PYTHONPATH"].update(value="/rum-llmobs-hook:/app"),
        ),
        check_hook_wiring,
    ),
    "shared-env-changed-in-worker": (
        "anchors.yaml",
        _on(
            "Deployment/agents/planner",
            lambda d: template_of(d)["spec"]["containers"][1]["env"].append({"name": "PYTHONPATH2", "value": "x"}),
        ),  # type: ignore[index]
        check_app_containers_kept,
    ),
    "selector-changed": (
        "anchors.yaml",
        _on(
            "Deployment/agents/planner",
            lambda d: d["spec"]["selector"]["matchLabels"].update(
                {"tags.datadoghq.com/rum-llmobs-proxy.service": "rum-llmobs-proxy"}
            ),
        ),
        check_workload_outside_pod_kept,
    ),
    "header-mismatch": (
        "chart.yaml",
        _on(BOT, lambda d: _sidecar_env(d, "RUM_PROXY_SESSION_HEADER", "x-other")),
        check_hook_wiring,
    ),
    "log-shipper-changed": (
        "chart.yaml",
        _on(BOT, lambda d: template_of(d)["spec"]["containers"][1].update(image="fluent-bit:latest")),  # type: ignore[index]
        check_app_containers_kept,
    ),
    "agent-env-lost": (
        "chart.yaml",
        _on(BOT, lambda d: agent_of(d)["env"].pop(1)),
        check_app_containers_kept,
    ),
    "upstream-not-local": (
        "chart.yaml",
        _on(BOT, lambda d: _sidecar_env(d, "RUM_PROXY_UPSTREAM_URL", "http://support-bot:80")),
        check_proxy_env,
    ),
    "upstream-is-proxy": (
        "chart.yaml",
        _on(BOT, lambda d: _sidecar_env(d, "RUM_PROXY_UPSTREAM_URL", "http://127.0.0.1:8080")),
        check_proxy_env,
    ),
    "upstream-is-metrics": (
        "chart.yaml",
        _on(BOT, lambda d: _sidecar_env(d, "RUM_PROXY_UPSTREAM_URL", "http://127.0.0.1:9191")),
        check_proxy_env,
    ),
    "admin-port-collides": ("chart.yaml", _on(BOT, _admin_port_on_metrics), check_proxy_env),
    # The bug the issue reports: the first port (metrics) sent to the proxy, the agent's port left around it.
    "first-port-retargeted": (
        "chart.yaml",
        _service_port("Service/-/support-bot", 0, "rum-proxy"),
        check_service_ports,
    ),
    "agent-port-bypasses-proxy": ("chart.yaml", _service_port("Service/-/support-bot", 1, "http"), check_service_ports),
    # Kubernetes 1.29-1.32 resolve a named targetPort only against regular containers: this routes nowhere there.
    "sidecar-port-by-name": ("chart.yaml", _service_port("Service/-/support-bot", 1, "rum-proxy"), check_service_ports),
    "udp-port-retargeted": ("anchors.yaml", _service_port("Service/agents/planner", 1, 8080), check_service_ports),
    "numeric-agent-port-kept": (
        "statefulset.yaml",
        _service_port("Service/research/memory-agent", 0, 8080),
        check_service_ports,
    ),
    "policy-still-only-agent-port": (
        "chart.yaml",
        _on("NetworkPolicy/-/support-bot", lambda p: p["spec"]["ingress"][0]["ports"].pop()),
        check_network_policies,
    ),
    "policy-opened-wide": (
        "chart.yaml",
        _on("NetworkPolicy/-/support-bot", lambda p: p["spec"]["ingress"][0]["ports"].append({"port": 9090})),
        check_network_policies,
    ),
    "grace-too-short": (
        "chart.yaml",
        _on(BOT, lambda d: template_of(d)["spec"].update(terminationGracePeriodSeconds=30)),  # type: ignore[index]
        check_grace_period,
    ),
    "own-grace-shortened": (
        "list.yaml",
        _on("Deployment/agents/faq-agent", lambda d: template_of(d)["spec"].update(terminationGracePeriodSeconds=60)),  # type: ignore[index]
        check_grace_period,
    ),
    "metrics-on-proxy-port": ("chart.yaml", _on(BOT, _ad_on_proxy_port), check_autodiscovery),
    "configmap-value-changed": (
        "chart.yaml",
        _on("ConfigMap/-/support-bot-prompts", lambda c: c["data"].update(PORT_MAPPING=484880)),
        check_others_unchanged,
    ),
    "service-type-changed": (
        "chart.yaml",
        _on("Service/-/support-bot", lambda s: s["spec"].update(type="NodePort")),
        check_others_unchanged,
    ),
    "other-namespace-service-retargeted": (
        "statefulset.yaml",
        _service_port("Service/other-team/memory-agent", 0, "rum-proxy"),
        check_others_unchanged,
    ),
}


def test_every_check_is_shown_to_fail() -> None:
    assert {check for _, _, check in BREAKAGES.values()} == set(ALL_CHECKS)


@pytest.mark.parametrize("breakage", BREAKAGES, ids=str)
def test_checks_catch_a_broken_copy(breakage: str) -> None:
    fixture, mutate, check = BREAKAGES[breakage]
    before = source(fixture)
    after = inject_documents(before, OPTIONS)
    check(before, after)  # the good copy passes...
    mutate(after)
    with pytest.raises(AssertionError):
        check(before, after)  # ...the broken one does not


# ---------------------------------------------------------------- what a user sees, per fixture


def test_chart_two_containers_several_ports() -> None:
    docs = injected_fixture("chart.yaml")
    bot = find(docs, BOT)
    agent, sidecar = agent_of(bot), sidecar_of(bot)
    assert agent["name"] == "app", "chosen by the rum-llmobs-proxy/agent-container annotation"
    assert env_value(sidecar, "RUM_PROXY_UPSTREAM_URL") == "http://127.0.0.1:8000", "the port named http"
    assert env_value(agent, "PYTHONPATH") == "/rum-llmobs-hook:/app/src", "first, then the existing value"
    assert env_value(sidecar, "RUM_PROXY_SOURCES") == "body,cookie"
    assert env_value(sidecar, "RUM_PROXY_LOG_LEVEL") == "debug"
    assert env_value(sidecar, "RUM_PROXY_IDLE_TIMEOUT_SECONDS") == "600"
    assert sidecar["image"] == IMAGE
    labels = template_of(bot)["metadata"]["labels"]  # type: ignore[index]
    assert labels["tags.datadoghq.com/rum-llmobs-proxy.version"] == "0.1.0", "the image's tag"
    for obj in (bot, find(docs, "Service/-/support-bot")):
        filename = obj["metadata"]["annotations"]["postrenderer.helm.sh/postrender-filename"]
        assert filename == f"support-bot/templates/{obj['kind'].lower()}.yaml", "Helm 4 maps objects back by it"
    service = find(docs, "Service/-/support-bot")
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("metrics", "metrics"),
        ("http", 8080),
    ], "the proxy's port by number: a named one reaches a native sidecar only from Kubernetes 1.33"
    assert find(docs, "ConfigMap/-/support-bot-prompts")["data"]["PORT_MAPPING"] == "8080:80"
    policy = find(docs, "NetworkPolicy/-/support-bot")
    assert policy["spec"]["ingress"][0]["ports"] == [
        {"port": "http", "protocol": "TCP"},
        {"port": 8080, "protocol": "TCP"},
    ], "the ingress controller may now reach the proxy"


def test_library_injection_pythonpath_lets_the_admission_controller_go_first() -> None:
    docs = injected_fixture("library-injection.yaml")
    deployment = find(docs, "Deployment/agents/triage-agent")
    assert env_value(agent_of(deployment), "PYTHONPATH") == "/rum-llmobs-hook"
    # Datadog's admission controller (before its LD_PRELOAD injector) prepends its directory at pod creation:
    # /datadog-lib/:/rum-llmobs-hook; its sitecustomize runs ddtrace's, which runs the next: the hook's.
    assert env_value(sidecar_of(deployment), "RUM_PROXY_UPSTREAM_URL") == "http://127.0.0.1:5000", "the only port"
    assert find(docs, "Service/agents/triage-agent")["spec"]["ports"][0]["targetPort"] == 8080
    template = template_of(deployment)
    assert template is not None and template["metadata"]["labels"]["admission.datadoghq.com/enabled"] == "true"


def test_statefulset_agent_on_the_proxy_default_port() -> None:
    docs = injected_fixture("statefulset.yaml")
    statefulset = find(docs, "StatefulSet/research/memory-agent")
    sidecar = sidecar_of(statefulset)
    assert env_value(sidecar, "RUM_PROXY_UPSTREAM_URL") == "http://127.0.0.1:8080"
    assert (env_value(sidecar, "RUM_PROXY_PORT"), env_value(sidecar, "RUM_PROXY_ADMIN_PORT")) == ("8081", "8082")
    assert env_value(agent_of(statefulset), "PYTHONPATH") == "/rum-llmobs-hook:/srv/app:/srv/lib"
    assert find(docs, "Service/research/memory-agent")["spec"]["ports"][0]["targetPort"] == 8081
    assert find(docs, "Service/research/memory-agent-headless")["spec"]["ports"][0]["targetPort"] == 8081
    assert find(docs, "Service/other-team/memory-agent") == find(
        load("statefulset.yaml"), "Service/other-team/memory-agent"
    )
    annotations = template_of(statefulset)["metadata"]["annotations"]  # type: ignore[index]
    assert "%%host%%:8082/metrics" in annotations["ad.datadoghq.com/rum-llmobs-proxy.checks"]


def test_list_stays_one_list_and_keeps_a_longer_grace_period() -> None:
    docs = injected_fixture("list.yaml", all_workloads=True)
    assert len(docs) == 1 and docs[0]["kind"] == "List"
    assert [ref(o) for o in injected(docs)] == ["Deployment/agents/faq-agent"], "its ReplicaSet follows its owner"
    deployment = find(docs, "Deployment/agents/faq-agent")
    assert template_of(deployment)["spec"]["terminationGracePeriodSeconds"] == 90  # type: ignore[index]
    assert find(docs, "Service/agents/faq-agent")["spec"]["ports"][0]["targetPort"] == 8080


def test_jobs_are_injected_only_when_they_opt_in() -> None:
    docs = injected_fixture("batch.yaml")
    assert {ref(o) for o in injected(docs)} == {"Job/evals/eval-run", "CronJob/evals/nightly-digest"}
    job = find(docs, "Job/evals/eval-run")
    assert env_value(sidecar_of(job), "RUM_PROXY_UPSTREAM_URL") == "http://127.0.0.1:9000", "an undeclared port"
    assert template_of(job)["spec"]["restartPolicy"] == "Never"  # type: ignore[index]
    unlabelled = load_manifests(OWN_INIT.replace('labels: {rum-llmobs-proxy/inject: "true"}', "labels: {}"))
    as_job = copy.deepcopy(unlabelled[0]) | {"apiVersion": "batch/v1", "kind": "Job"}
    as_job["spec"].pop("selector")
    as_job["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    result = inject([*unlabelled, as_job], InjectOptions(all_workloads=True))
    assert result.injected == ["Deployment/-/bot"], "--all covers long-running workloads, not Jobs"


def test_passthrough_objects_are_unchanged_and_all_takes_every_deployment() -> None:
    original = load("passthrough.yaml")
    assert inject_documents(original, OPTIONS) == original
    docs = injected_fixture("passthrough.yaml", all_workloads=True)
    assert [ref(o) for o in injected(docs)] == ["Deployment/agents/embedder"]
    assert find(docs, "Service/agents/embedder")["spec"]["ports"][0]["targetPort"] == 8080
    for check in ALL_CHECKS:
        check(original, docs)


def test_host_network_pods_get_a_note() -> None:
    docs = load_manifests(OWN_INIT.replace("      initContainers:", "      hostNetwork: true\n      initContainers:"))
    assert inject(docs, OPTIONS).notes == [
        "Deployment/-/bot: hostNetwork pod: the proxy's ports 8080 and 8081 open on the node"
    ]


def test_opt_out_wins_over_all() -> None:
    docs = load_manifests(OWN_INIT.replace('"true"', '"false"'))
    assert inject_documents(docs, InjectOptions(all_workloads=True)) == docs


def test_an_already_injected_manifest_is_updated_not_doubled() -> None:
    before = load("component-injected.yaml")
    docs = injected_fixture("component-injected.yaml")
    deployment = find(docs, "Deployment/llm-agent-demo/llm-agent")
    template = template_of(deployment)
    assert template is not None
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["rum-llmobs-hook", "rum-llmobs-proxy"]
    assert [v["name"] for v in template["spec"]["volumes"]] == ["rum-llmobs-hook", "rum-llmobs-proxy-tmp"]
    assert "envFrom" not in sidecar_of(deployment), "settings are plain env values now"
    assert env_value(agent_of(deployment), "PYTHONPATH") == "/rum-llmobs-hook"
    service = find(docs, "Service/llm-agent-demo/llm-agent")
    assert service == find(before, "Service/llm-agent-demo/llm-agent"), "already reaches the proxy (8080)"


def test_image_annotation_and_a_digest() -> None:
    digest = "registry.example.com/rum-llmobs-proxy@sha256:" + "ab" * 32
    docs = load_manifests(
        OWN_INIT.replace(
            "metadata: {labels: {app: bot}}",
            f"metadata: {{labels: {{app: bot}}, annotations: {{rum-llmobs-proxy/image: '{digest}'}}}}",
        )
    )
    bot = injected(inject_documents(docs, OPTIONS))[0]
    assert sidecar_of(bot)["image"] == digest
    assert template_of(bot)["metadata"]["labels"]["tags.datadoghq.com/rum-llmobs-proxy.version"] == __version__  # type: ignore[index]


def test_session_header_from_env_annotation_reaches_the_hook() -> None:
    docs = load_manifests(OWN_INIT)
    extra_env = {"RUM_PROXY_SESSION_HEADER": "x-chat-session", "DD_TRACE_ENABLED": False}
    docs[0]["metadata"]["annotations"] = {"rum-llmobs-proxy/env": json.dumps(extra_env)}
    after = inject_documents(docs, OPTIONS)
    bot = injected(after)[0]
    assert env_value(agent_of(bot), "RUM_PROXY_SESSION_HEADER") == "x-chat-session"
    assert env_value(sidecar_of(bot), "RUM_PROXY_SESSION_HEADER") == "x-chat-session"
    assert env_value(sidecar_of(bot), "DD_TRACE_ENABLED") == "false"
    check_hook_wiring(docs, after)


# ---------------------------------------------------------------- refusals name the object, nothing is written

BROKEN_BASE = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bot
  namespace: prod
  labels: {rum-llmobs-proxy/inject: "true"}
  annotations: {}
spec:
  selector: {matchLabels: {app: bot}}
  template:
    metadata: {labels: {app: bot}}
    spec:
      containers:
        - name: app
          image: example/bot:2
          ports: [{name: web, containerPort: 8000}, {name: metrics, containerPort: 9090}]
          env: []
        - {name: shipper, image: example/shipper:1}
"""


AGENT_IS_APP_WEB = "rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: web"


def _broken(annotations: str = "", pythonpath: str = "", extra: str = "") -> str:
    text = BROKEN_BASE.replace("annotations: {}", f"annotations: {{{annotations}}}")
    if pythonpath:
        text = text.replace("env: []", f"env: [{pythonpath}]")
    return text + extra


REFUSALS: dict[str, tuple[str, str]] = {
    "ambiguous-container": (_broken(), "2 containers (app, shipper): say which one is the agent"),
    "unknown-container": (
        _broken("rum-llmobs-proxy/agent-container: agent"),
        "rum-llmobs-proxy/agent-container 'agent' is not one of its containers (app, shipper)",
    ),
    "ambiguous-port": (
        _broken("rum-llmobs-proxy/agent-container: app"),
        "container app has several TCP ports (8000 (web), 9090 (metrics)) and none named http",
    ),
    "no-port": (
        _broken("rum-llmobs-proxy/agent-container: shipper"),
        "container shipper declares no TCP port: set the annotation rum-llmobs-proxy/agent-port",
    ),
    "unknown-port-name": (
        _broken("rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: http"),
        "rum-llmobs-proxy/agent-port 'http' is not a TCP port of container app",
    ),
    "port-of-another-container": (
        _broken("rum-llmobs-proxy/agent-container: shipper, rum-llmobs-proxy/agent-port: '8000'"),
        "rum-llmobs-proxy/agent-port 8000 is a port of container app, not of shipper",
    ),
    "pythonpath-value-from": (
        _broken(
            "rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: web",
            "{name: PYTHONPATH, valueFrom: {configMapKeyRef: {name: x, key: y}}}",
        ),
        "PYTHONPATH comes from valueFrom",
    ),
    "typo-in-annotation": (
        _broken("rum-llmobs-proxy/agent-contaner: app"),
        "unknown annotation rum-llmobs-proxy/agent-contaner",
    ),
    "env-not-pairs": (
        _broken("rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: web, rum-llmobs-proxy/env: DEBUG"),
        "rum-llmobs-proxy/env: 'DEBUG' is not NAME=value",
    ),
    "env-managed": (
        _broken(
            "rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: web, "
            "rum-llmobs-proxy/env: 'RUM_PROXY_UPSTREAM_URL=http://elsewhere'"
        ),
        "RUM_PROXY_UPSTREAM_URL is set by the injector",
    ),
    "unknown-source": (
        _broken(f"{AGENT_IS_APP_WEB}, rum-llmobs-proxy/sources: 'body,smoke'"),
        "rum-llmobs-proxy/sources 'body,smoke'",
    ),
    "proxy-port-taken": (
        _broken(f"{AGENT_IS_APP_WEB}, rum-llmobs-proxy/proxy-port: '9090'"),
        "rum-llmobs-proxy/proxy-port 9090 is already used in the pod",
    ),
    "not-true-or-false": (
        BROKEN_BASE.replace('{rum-llmobs-proxy/inject: "true"}', '{rum-llmobs-proxy/inject: "yes"}'),
        'label rum-llmobs-proxy/inject must be "true" or "false"',
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refusal_names_the_object_and_the_problem(case: str) -> None:
    text, problem = REFUSALS[case]
    with pytest.raises(InjectError) as raised:
        inject_documents(load_manifests(text), OPTIONS)
    assert len(raised.value.problems) == 1, raised.value.problems
    assert raised.value.problems[0].startswith("Deployment/prod/bot: "), raised.value.problems
    assert problem in raised.value.problems[0]


def test_a_service_in_front_of_injected_and_plain_pods_is_refused() -> None:
    canary = BROKEN_BASE.replace("name: bot\n", "name: bot-canary\n").replace('{rum-llmobs-proxy/inject: "true"}', "{}")
    service = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: bot, namespace: prod}
        spec: {selector: {app: bot}, ports: [{port: 80, targetPort: web}]}
        """
    )
    annotations = "rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: web"
    stream = load_manifests("---\n".join([_broken(annotations), canary, service]))
    with pytest.raises(InjectError) as raised:
        inject_documents(stream, OPTIONS)
    assert raised.value.problems == [
        "Service/prod/bot: selects Deployment/prod/bot (injected) and Deployment/prod/bot-canary (not injected): "
        "its traffic would reach some pods through the proxy and others around it; inject both or neither"
    ]


@pytest.mark.parametrize(
    ("containers", "problem"),
    [("oops", "its pod template has no containers"), ('[{name: a, ports: "x"}]', "malformed Deployment")],
)
def test_malformed_workloads_are_refused_not_crashed_on(containers: str, problem: str) -> None:
    text = OWN_INIT.replace(
        "containers: [{name: main, image: example/bot:2, ports: [{containerPort: 8000}]}]", f"containers: {containers}"
    )
    with pytest.raises(InjectError) as raised:
        inject_documents(load_manifests(text), OPTIONS)
    assert raised.value.problems[0].startswith(f"Deployment/-/bot: {problem}")


def test_the_default_image_gets_a_note_or_is_refused() -> None:
    unpublished = (
        f"image rum-llmobs-proxy:{__version__} is the default, which no registry publishes: build and push the "
        "image, then pass --image or set the annotation rum-llmobs-proxy/image"
    )
    assert inject(load_manifests(OWN_INIT), InjectOptions()).notes == [f"Deployment/-/bot: {unpublished}"]
    with pytest.raises(InjectError) as raised:
        inject(load_manifests(OWN_INIT), InjectOptions(require_image=True))
    assert raised.value.problems == [f"Deployment/-/bot: {unpublished}"]
    # Named explicitly (a locally loaded image, kind load docker-image), the same reference is accepted.
    explicit = InjectOptions(image=f"rum-llmobs-proxy:{__version__}", require_image=True)
    assert sidecar_of(injected(inject_documents(load_manifests(OWN_INIT), explicit))[0])["image"] == explicit.image


def test_every_problem_is_reported_at_once() -> None:
    stream = load_manifests(
        "---\n".join([REFUSALS["ambiguous-container"][0], REFUSALS["no-port"][0].replace("name: bot\n", "name: b2\n")])
        + "---\n- just a list\n"
    )
    with pytest.raises(InjectError) as raised:
        inject_documents(stream, OPTIONS)
    assert [p.split(":")[0] for p in raised.value.problems] == [
        "document 3",
        "Deployment/prod/bot",
        "Deployment/prod/b2",
    ]


# ---------------------------------------------------------------- Kubernetes versions, ports, protocols


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_fixture_is_valid_and_reaches_the_proxy_on(version: str) -> None:
    """1.29 (native sidecars on by default) through the newest schemas: strict schema validation, and every
    retargeted Service port resolved the way that version's endpoints controller resolves it."""
    for fixture in INJECTABLE:
        before, after = load(fixture), injected_fixture(fixture)
        for obj in objects(after):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                assert "." in obj["apiVersion"].rpartition("/")[0], f"{fixture}: no schema for {ref(obj)}"
        for workload in injected(after):
            pod = template_of(workload)["spec"]  # type: ignore[index]
            proxy_port = int(env_value(sidecar_of(workload), "RUM_PROXY_PORT"))
            for service in (o for o in objects(after) if o["kind"] == "Service" and selects(o, workload)):
                old = find(before, ref(service))
                for port, was in zip(service["spec"]["ports"], old["spec"]["ports"], strict=True):
                    if port != was:
                        reached = resolve_port(pod, port["targetPort"], port.get("protocol", "TCP"), version)
                        assert reached == ("rum-llmobs-proxy", proxy_port), f"{fixture}: {ref(service)} on {version}"


def test_an_earlier_named_target_port_becomes_the_number() -> None:
    """Output of the previous injector (targetPort and policy port rum-proxy) routes on 1.29-1.32 once re-injected."""
    docs = injected_fixture("chart.yaml")
    find(docs, "Service/-/support-bot")["spec"]["ports"][1]["targetPort"] = "rum-proxy"
    find(docs, "NetworkPolicy/-/support-bot")["spec"]["ingress"][0]["ports"][1] = {"port": "rum-proxy"}
    again = inject_documents(docs, OPTIONS)
    assert again == injected_fixture("chart.yaml")


SHIPPER_FIRST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bot
  labels: {rum-llmobs-proxy/inject: "true"}
  annotations: {rum-llmobs-proxy/agent-container: app, rum-llmobs-proxy/agent-port: "8000"}
spec:
  selector: {matchLabels: {app: bot}}
  template:
    metadata: {labels: {app: bot}}
    spec:
      containers:
        - {name: shipper, image: example/shipper:1, ports: [{name: http, containerPort: 9000}]}
        - name: app
          image: example/bot:2
          ports: [{name: http, containerPort: 8000}, {name: dns, containerPort: 8053, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: bot}
spec:
  selector: {app: bot}
  ports:
    - {name: by-name, port: 80, targetPort: http}
    - {name: by-number, port: 81, targetPort: 8000}
    - {name: udp-number, port: 82, targetPort: 8000, protocol: UDP}
    - {name: udp-name, port: 83, targetPort: dns, protocol: UDP}
"""


def test_target_ports_resolve_as_kubernetes_resolves_them() -> None:
    """A name is the first container's port of that name and protocol (here the shipper's 9000, not the agent's),
    a number over UDP is another port: only the TCP port that really reaches the agent goes to the proxy."""
    result = inject(load_manifests(SHIPPER_FIRST), OPTIONS)
    service = result.documents[1]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", 8080, 8000, "dns"]
    assert result.changed == ["Service/-/bot: port by-number now targets 8080 (rum-proxy)"]
    check_service_ports(load_manifests(SHIPPER_FIRST), result.documents)


POLICY = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bot}
spec:
  podSelector: {matchLabels: {app: bot}}
  ingress:
    - ports: [{port: 8000, endPort: 8100}]
    - ports: [{port: 8000, protocol: UDP}]
    - ports: [{port: http}]
    - ports: [{port: 8000}]
"""


def test_network_policy_ports_by_number_range_and_protocol() -> None:
    docs = inject_documents(load_manifests(SHIPPER_FIRST + POLICY), OPTIONS)
    assert [rule["ports"] for rule in docs[2]["spec"]["ingress"]] == [
        [{"port": 8000, "endPort": 8100}],  # the range already allows the proxy's 8080
        [{"port": 8000, "protocol": "UDP"}],  # not the agent's TCP port
        [{"port": "http"}],  # the shipper's port, by Kubernetes' resolution
        [{"port": 8000}, {"port": 8080, "protocol": "TCP"}],
    ]


# ---------------------------------------------------------------- PYTHONPATH


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/app", "/rum-llmobs-hook:/app"),
        (":/app", "/rum-llmobs-hook::/app"),  # the empty entry is the working directory: kept
        ("/app:", "/rum-llmobs-hook:/app:"),
        ("/app::/lib", "/rum-llmobs-hook:/app::/lib"),
        ("", "/rum-llmobs-hook"),  # an empty value has no entry at all (not the working directory)
        ("/app:/rum-llmobs-hook", "/rum-llmobs-hook:/app"),  # what the previous injector wrote: moved first
        ("/datadog-lib/:/app", "/rum-llmobs-hook:/datadog-lib/:/app"),
    ],
)
def test_pythonpath_gets_the_hook_first_and_keeps_every_entry(value: str, expected: str) -> None:
    docs = load_manifests(OWN_INIT.replace("ports: [{containerPort: 8000}]", "ports: [{containerPort: 8000}], env: []"))
    env_of_main = template_of(docs[0])["spec"]["containers"][0]["env"]  # type: ignore[index]
    env_of_main.append({"name": "PYTHONPATH", "value": value})
    result = inject(docs, OPTIONS)
    assert env_value(agent_of(result.documents[0]), "PYTHONPATH") == expected
    assert result.warnings == []
    check_hook_wiring(docs, result.documents)
    assert inject_documents(result.documents, OPTIONS) == result.documents


def test_no_pythonpath_warns_and_the_annotation_keeps_the_images() -> None:
    result = inject(load_manifests(OWN_INIT), OPTIONS)
    assert env_value(agent_of(result.documents[0]), "PYTHONPATH") == "/rum-llmobs-hook"
    assert result.warnings == [
        "Deployment/-/bot: container main sets no PYTHONPATH, so PYTHONPATH=/rum-llmobs-hook replaces any "
        "PYTHONPATH its image sets (ENV PYTHONPATH=/app is common) and the agent may no longer import its own code; "
        "state the image's value with the annotation rum-llmobs-proxy/image-pythonpath (empty when it has none), "
        "or add it to the container's env"
    ]
    for stated, expected in [("/app:/app/vendor", "/rum-llmobs-hook:/app:/app/vendor"), ("", "/rum-llmobs-hook")]:
        docs = load_manifests(OWN_INIT)
        docs[0]["metadata"]["annotations"] = {"rum-llmobs-proxy/image-pythonpath": stated}
        result = inject(docs, OPTIONS)
        assert env_value(agent_of(result.documents[0]), "PYTHONPATH") == expected
        assert result.warnings == []
        check_hook_wiring(docs, result.documents)
        assert inject_documents(result.documents, OPTIONS) == result.documents, "stable: the env now has it"


# ---------------------------------------------------------------- anchors, missing templates


def test_aliases_are_copies_the_selector_and_the_other_container_stay() -> None:
    before = load("anchors.yaml")
    docs = injected_fixture("anchors.yaml")
    planner = find(docs, "Deployment/agents/planner")
    assert planner["spec"]["selector"] == {"matchLabels": {"app": "planner"}}, "immutable: never changed"
    worker = template_of(planner)["spec"]["containers"][1]  # type: ignore[index]
    assert worker == template_of(find(before, "Deployment/agents/planner"))["spec"]["containers"][1]  # type: ignore[index]
    assert env_value(agent_of(planner), "PYTHONPATH") == "/rum-llmobs-hook::/app"
    assert not re.search(r"[&*]id\d+", dump_manifests(docs)), "written out, no anchors or aliases"


def test_alias_expansion_is_bounded() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(7)
    )
    with pytest.raises(InjectError) as raised:
        inject_documents(load_manifests(bomb), OPTIONS)
    assert raised.value.problems == ["more than 2000000 values once YAML aliases are expanded"]


@pytest.mark.parametrize("spec", ["{replicas: 1}", "{template: null}", "{jobTemplate: {spec: {}}}"])
def test_an_opted_in_workload_without_a_pod_template_is_refused(spec: str) -> None:
    kind = "CronJob" if "jobTemplate" in spec else "Deployment"
    api = "batch/v1" if kind == "CronJob" else "apps/v1"
    metadata = '{name: bot, labels: {rum-llmobs-proxy/inject: "true"}}'
    text = f"apiVersion: {api}\nkind: {kind}\nmetadata: {metadata}\nspec: {spec}\n"
    with pytest.raises(InjectError) as raised:
        inject_documents(load_manifests(text), OPTIONS)
    assert raised.value.problems == [
        f"{kind}/-/bot: opted in, but it has no pod template (spec.template) to add the proxy to"
    ]


def test_a_service_in_front_of_proxies_on_different_ports_is_refused() -> None:
    """One number must reach every pod the Service selects (a name would, but only from Kubernetes 1.33)."""
    blue = OWN_INIT.replace("ports: [{containerPort: 8000}]", "ports: [{name: http, containerPort: 8000}]")
    green = blue.replace("name: bot,", "name: bot-green,").replace(
        "{name: http, containerPort: 8000}", "{name: http, containerPort: 8000}, {name: metrics, containerPort: 8080}"
    )  # 8080 taken: its proxy listens on 8081
    spec = "{selector: {app: bot}, ports: [{port: 80, targetPort: http}]}"
    service = f"apiVersion: v1\nkind: Service\nmetadata: {{name: bot}}\nspec: {spec}\n"
    with pytest.raises(InjectError) as raised:
        inject_documents(load_manifests("---\n".join([blue, green, service])), OPTIONS)
    assert raised.value.problems == [
        "Service/-/bot: port http reaches workloads whose proxies listen on different ports ([8080, 8081]): give "
        "them the same rum-llmobs-proxy/proxy-port annotation"
    ]
