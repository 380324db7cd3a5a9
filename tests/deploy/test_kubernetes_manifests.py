"""kustomize users: `kustomize build … | rum-llmobs-proxy inject`, with the real kustomize and the real CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from checks import (
    ALL_CHECKS,
    KUBERNETES_VERSIONS,
    Check,
    Doc,
    by_name,
    check_container_restricted,
    injected,
    objects,
    template_of,
)
from conftest import KUBERNETES_DIR, REPO_ROOT, Render

IMAGE = "registry.example.com/rum-llmobs-proxy:0.1.0"
KUSTOMIZATIONS = sorted(p.parent for p in KUBERNETES_DIR.rglob("kustomization.yaml"))


def inject_cli(docs: list[Doc], *args: str) -> list[Doc]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rum-llmobs-proxy"), "inject", *args],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_example_is_the_only_kustomization() -> None:
    """One way, not two: the kustomize Component that patched `spec.ports[0]` blindly is gone."""
    assert [p.relative_to(KUBERNETES_DIR).as_posix() for p in KUSTOMIZATIONS] == ["example"]
    assert not (KUBERNETES_DIR / "components").exists() and not (KUBERNETES_DIR / "base").exists()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_example_renders_and_validates_as_is(render: Render, version: str) -> None:
    for doc in render(KUBERNETES_DIR / "example"):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture(scope="module")
def example(render: Render) -> Iterator[tuple[list[Doc], list[Doc]]]:
    rendered = render(KUBERNETES_DIR / "example")
    yield rendered, inject_cli(rendered, "--image", IMAGE)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_kustomize_build_piped_through_inject(example: tuple[list[Doc], list[Doc]], check: Check) -> None:
    before, after = example
    check(before, after)


def test_the_metrics_port_is_left_alone(example: tuple[list[Doc], list[Doc]]) -> None:
    _, after = example
    service = next(o for o in objects(after) if o["kind"] == "Service")
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("metrics", "metrics"),
        ("http", 8080),
    ]


def test_the_pod_passes_the_namespaces_restricted_standard(example: tuple[list[Doc], list[Doc]]) -> None:
    _, after = example
    namespace = next(o for o in after if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (deployment,) = injected(after)
    assert deployment["metadata"]["namespace"] == namespace["metadata"]["name"]
    pod = template_of(deployment)["spec"]  # type: ignore[index]
    for container in pod["initContainers"] + pod["containers"]:
        check_container_restricted(container, pod.get("securityContext", {}))
    assert by_name(pod["initContainers"], "rum-llmobs-proxy")["image"] == IMAGE


def test_readme_commands_name_real_paths() -> None:
    guide = (REPO_ROOT / "deploy" / "README.md").read_text()
    for path in ("deploy/kubernetes/example", "deploy/helm/rum-llmobs-proxy-inject", "deploy/compose/compose.yaml"):
        assert path in guide, path
        assert (REPO_ROOT / path).exists(), path
    assert "components/rum-llmobs-proxy" not in guide and "?ref=v" not in guide, "no component, no release tags"
