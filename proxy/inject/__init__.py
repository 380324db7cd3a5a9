"""Adds rum-llmobs-proxy to Kubernetes manifests: pure functions over the plain dicts and lists PyYAML loads.

`inject_documents(docs, options)` returns a changed deep copy of `docs` or raises `InjectError` naming every
object it refused (`kind/namespace/name: problem`), so nothing is ever half-written. What it does, per workload
that opts in (label or annotation `rum-llmobs-proxy/inject: "true"`, or every Deployment, StatefulSet, DaemonSet
and ReplicaSet with `all_workloads`):

- pod spec: the hook copier (init container) and the proxy as a native sidecar (`initContainers` entry with
  `restartPolicy: Always`) first, the hook `emptyDir` and the proxy's `/tmp`, a grace period long enough to drain;
- agent container: the hook directory first on `PYTHONPATH` (every other entry kept), `RUM_PROXY_SESSION_HEADER`,
  the hook mount;
- pod metadata: unified service tags for the sidecar and Datadog Autodiscovery annotations (logs, openmetrics);
- Services in the same stream that select the workload: only the ports whose `targetPort` reaches the agent's
  port, resolved as Kubernetes resolves it, now target the proxy's port by number (a name would reach a native
  sidecar only from Kubernetes 1.33); every other port is left as it was;
- NetworkPolicies in the same stream: an ingress rule that allows the agent's port also allows the proxy's.

Documents are copied as trees first: a YAML alias loads as the object its anchor names, and must not carry a
change to the other place (a selector, another container's env).

Every step replaces what a previous run added instead of adding to it, so running it twice equals running it once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from proxy.inject.build import inject_workload
from proxy.inject.model import (
    DEFAULT_IMAGE,
    InjectError,
    Injection,
    InjectOptions,
    Manifest,
    Refused,
    Workload,
    reference,
)
from proxy.inject.network import open_network_policy, retarget_service
from proxy.inject.select import controlled, flatten, is_kind, is_workload, opted_in, pod_template

# Values in one stream once aliases are expanded: far beyond any real release, far below what exhausts memory.
MAX_NODES = 2_000_000

__all__ = ["DEFAULT_IMAGE", "InjectError", "InjectOptions", "Injection", "inject", "inject_documents", "reference"]


def inject_documents(documents: list[Any], options: InjectOptions) -> list[Any]:
    """The documents with rum-llmobs-proxy added; raises InjectError, naming each refused object."""
    return inject(documents, options).documents


def inject(documents: list[Any], options: InjectOptions) -> Injection:
    """Like inject_documents, and also says what was injected, which Services and policies changed, what to check."""
    problems: list[str] = []
    budget = [MAX_NODES]
    try:
        result = Injection(documents=[tree(d, budget) for d in documents if d is not None])
    except _TooLarge:
        raise InjectError([f"more than {MAX_NODES} values once YAML aliases are expanded"]) from None
    objects: list[Manifest] = []
    for index, document in enumerate(result.documents):
        if not isinstance(document, dict):
            problems.append(f"document {index + 1}: not a Kubernetes object (a mapping), got {_type(document)}")
            continue
        objects.extend(flatten(document))

    workloads: list[Workload] = []
    for obj in objects:
        template = pod_template(obj)
        if controlled(obj):
            continue
        if template is None:
            with _refusals(obj, problems):
                if is_workload(obj) and opted_in(obj, {}, options):
                    raise Refused("opted in, but it has no pod template (spec.template) to add the proxy to")
            continue
        workload = Workload(obj, template, tree(template.get("spec"), [MAX_NODES]) or {})
        workloads.append(workload)
        with _refusals(obj, problems):
            if opted_in(obj, template, options):
                workload.agent_port, workload.proxy_port = inject_workload(obj, template, options, result)
                workload.injected = True
                result.injected.append(reference(obj))

    for obj in objects:
        with _refusals(obj, problems):
            if is_kind(obj, "", "Service"):
                retarget_service(obj, workloads, result)
            elif is_kind(obj, "networking.k8s.io", "NetworkPolicy"):
                open_network_policy(obj, [w for w in workloads if w.injected], result)
    if problems:
        raise InjectError(problems)
    return result


@contextlib.contextmanager
def _refusals(obj: Manifest, problems: list[str]) -> Iterator[None]:
    """Records what is wrong with one object, prefixed by its reference, and goes on with the next."""
    try:
        yield
    except Refused as problem:
        problems.append(f"{reference(obj)}: {problem}")
    except (AttributeError, TypeError, KeyError, ValueError) as error:
        # A shape no API server would accept (a string where a list goes, …): say so rather than crash.
        problems.append(f"{reference(obj)}: malformed {obj.get('kind')} ({type(error).__name__}: {error})")


class _TooLarge(Exception):
    pass


def tree(node: Any, budget: list[int]) -> Any:
    """A copy of a loaded YAML document in which nothing is shared. PyYAML loads an alias (`labels: *sel`) as the
    very object its anchor names, so changing the pod labels would change the selector too; every node gets its own
    copy here, as if the aliases were written out. `budget` bounds the expansion (a "billion laughs" document)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge
    if isinstance(node, dict):
        return {key: tree(value, budget) for key, value in node.items()}
    if isinstance(node, list):
        return [tree(value, budget) for value in node]
    return node


def _type(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
