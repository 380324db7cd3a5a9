"""`rum-llmobs-proxy inject`: reads Kubernetes manifests (files or stdin), writes them with the proxy added.

Works in any pipeline and as a Helm post-renderer: stdin to stdout, nothing on stdout unless every object was
accepted. Exit status: 0 written; 1 refused (one `kind/namespace/name: problem` line per problem on stderr);
2 unreadable input (usage, missing file, not UTF-8, invalid YAML). Comments and key order are not kept (PyYAML).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import yaml

from proxy.inject import DEFAULT_IMAGE, InjectError, InjectOptions, inject

PROG = "rum-llmobs-proxy inject"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 like Kubernetes' own parser, minus base-60 numbers: `8080:80` stays a string, as kubectl reads it.

    A key twice in one mapping is refused (PyYAML would silently keep the last; kubectl refuses it too), which
    also catches files concatenated without a `---` between them.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged by PyYAML, kubectl reads it too
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (scripts, config files) as literal blocks so they stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def load_manifests(text: str, name: str = "<stdin>") -> list[Any]:
    """Every YAML document of a stream; empty documents (comments only, as Helm renders them) are dropped."""
    stream = io.StringIO(text)
    stream.name = name  # PyYAML names it in error marks
    return [document for document in yaml.load_all(stream, Loader=_Loader) if document is not None]  # noqa: S506


def dump_manifests(documents: Iterable[Any]) -> str:
    return yaml.dump_all(
        documents,
        Dumper=_Dumper,
        explicit_start=True,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=2**16,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Add rum-llmobs-proxy (native sidecar + hook) to the workloads of Kubernetes manifests that "
        'opt in with the label or annotation rum-llmobs-proxy/inject: "true", and point the Service ports that '
        "reach their agent at the proxy. Writes every object to stdout; comments and key order are not kept.",
        epilog="Exit status: 0 written, 1 refused (problems on stderr, nothing on stdout), 2 unreadable input. "
        "Per-workload annotations: rum-llmobs-proxy/agent-container, agent-port, image, sources, env, proxy-port, "
        "admin-port, image-pythonpath (see deploy/README.md).",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="manifest files; none or - reads stdin")
    parser.add_argument(
        "--all",
        action="store_true",
        dest="all_workloads",
        help="inject every Deployment, StatefulSet, DaemonSet and ReplicaSet not opted out with "
        'rum-llmobs-proxy/inject: "false" (Jobs and CronJobs still need their own opt-in)',
    )
    parser.add_argument(
        "--image",
        help="the rum-llmobs-proxy image you built and pushed (a workload's rum-llmobs-proxy/image annotation "
        f"wins); required unless every injected workload has that annotation: {DEFAULT_IMAGE} is not published",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr, only problems")
    return parser


def main(argv: list[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    documents: list[Any] = []
    for name in args.files or ["-"]:
        try:
            text = stdin.read() if name == "-" else _read(name)
            documents.extend(load_manifests(text, "<stdin>" if name == "-" else name))
        except OSError as error:
            return _fail(2, f"cannot read {name}: {error.strerror or error}")
        except UnicodeDecodeError as error:
            return _fail(2, f"{'stdin' if name == '-' else name}: not UTF-8 text (byte {error.start}): {error.reason}")
        except yaml.YAMLError as error:
            return _fail(2, f"{'stdin' if name == '-' else name}: not valid YAML: {_one_line(error)}")
    try:
        options = InjectOptions(image=args.image, all_workloads=args.all_workloads, require_image=True)
        result = inject(documents, options)
    except InjectError as error:
        return _fail(1, *error.problems, "nothing was written")
    stdout.write(dump_manifests(result.documents))
    stdout.flush()
    for line in result.warnings:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if not args.quiet:
        for line in (
            *(f"injected {ref}" for ref in result.injected),
            *(f"changed {line}" for line in result.changed),
            *(f"note: {line}" for line in result.notes),
        ):
            print(f"{PROG}: {line}", file=sys.stderr)
        if not result.injected:
            print(
                f'{PROG}: nothing opted in (label or annotation rum-llmobs-proxy/inject: "true", or --all)',
                file=sys.stderr,
            )
    return 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _one_line(error: yaml.YAMLError) -> str:
    return " ".join(str(error).split())


def _fail(status: int, *lines: str) -> int:
    for line in lines:
        print(f"{PROG}: {line}", file=sys.stderr)
    return status
