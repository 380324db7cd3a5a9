"""Create or update the rum-llmobs-proxy dashboard and monitors in a Datadog organisation, idempotently.

    pip install datadog-api-client
    DD_API_KEY=... DD_APP_KEY=... DD_SITE=datadoghq.eu python deploy/datadog/apply.py [--readme-url URL] [--dry-run]

DD_SITE defaults to datadoghq.com. The dashboard is found again by its title, each monitor by its
`rum-llmobs-proxy-monitor:<file name>` tag: a second run updates them in place and creates nothing. The application
key needs the dashboards_read/_write and monitors_read/_write scopes. `--api-url` sends the calls elsewhere (an
HTTP proxy of your own, or a test server); the tests run this script only against a local stand-in of the API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datadog_api_client import ApiClient, Configuration
from datadog_api_client.model_utils import validate_and_convert_types
from datadog_api_client.v1.api.dashboards_api import DashboardsApi
from datadog_api_client.v1.api.monitors_api import MonitorsApi
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor
from datadog_api_client.v1.model.monitor_update_request import MonitorUpdateRequest

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboard.json"
MONITORS = HERE / "monitors"
MONITOR_TAG = "rum-llmobs-proxy-monitor"  # <MONITOR_TAG>:<file stem> names each monitor for the next run
README_LINK = "README.md#troubleshooting"  # in each monitor's message; --readme-url makes it a full link


def load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: not a JSON object")
    return data


def monitor_files() -> list[Path]:
    return sorted(MONITORS.glob("*.json"))


def monitor_key(data: dict[str, Any], path: Path) -> str:
    tag = f"{MONITOR_TAG}:{path.stem}"
    if tag not in data.get("tags", []):
        raise SystemExit(f"{path}: its tags must include {tag!r} (how the next run finds it again)")
    return tag


def with_readme(message: str, readme_url: str | None) -> str:
    return message.replace(README_LINK, f"{readme_url.rstrip('/')}#troubleshooting") if readme_url else message


def configuration(api_url: str | None) -> Configuration:
    missing = [name for name in ("DD_API_KEY", "DD_APP_KEY") if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"set {' and '.join(missing)} (and DD_SITE unless it is datadoghq.com)")
    # Reads DD_API_KEY, DD_APP_KEY and DD_SITE.
    config = Configuration()  # type: ignore[no-untyped-call]
    config.server_variables.setdefault("site", os.environ.get("DD_SITE") or "datadoghq.com")
    if api_url:
        config.host = api_url
    return config


def apply_dashboard(api: DashboardsApi, data: dict[str, Any], dry_run: bool) -> str:
    body = _model(Dashboard, data)
    title = data["title"]
    found = [summary.id for summary in api.list_dashboards().dashboards if summary.title == title]
    if len(found) > 1:
        raise SystemExit(f"{len(found)} dashboards are titled {title!r}: delete all but one, then run again")
    if dry_run:
        return f"dashboard {title!r}: would {'update ' + found[0] if found else 'create'}"
    if found:
        api.update_dashboard(found[0], body)
        return f"dashboard {title!r}: updated {found[0]}"
    created = api.create_dashboard(body)
    return f"dashboard {title!r}: created {created.id}"


def apply_monitor(api: MonitorsApi, path: Path, readme_url: str | None, dry_run: bool) -> str:
    data = load_json(path)
    key = monitor_key(data, path)
    data["message"] = with_readme(data["message"], readme_url)
    found = [monitor.id for monitor in api.list_monitors(monitor_tags=key)]
    if len(found) > 1:
        raise SystemExit(f"{len(found)} monitors are tagged {key!r}: delete all but one, then run again")
    if dry_run:
        return f"monitor {path.stem}: would {f'update {found[0]}' if found else 'create'}"
    if found:
        update = {name: value for name, value in data.items() if name != "type"}  # a monitor's type is fixed
        api.update_monitor(found[0], _model(MonitorUpdateRequest, update))
        return f"monitor {path.stem}: updated {found[0]}"
    created = api.create_monitor(_model(Monitor, data))
    return f"monitor {path.stem}: created {created.id}"


def _model(cls: type[Any], data: dict[str, Any]) -> Any:
    """`data` (API JSON) as the client's typed model (a mistyped value is refused)."""
    untyped = Configuration()  # type: ignore[no-untyped-call]
    return validate_and_convert_types(data, (cls,), [cls.__name__], True, True, untyped)  # type: ignore[no-untyped-call]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--readme-url", help="where your copy of the README lives, for the monitors' links")
    parser.add_argument("--api-url", help="send the API calls here instead of https://api.$DD_SITE")
    parser.add_argument("--dry-run", action="store_true", help="say what would be created or updated, change nothing")
    args = parser.parse_args(argv)
    with ApiClient(configuration(args.api_url)) as client:
        dashboards = DashboardsApi(client)  # type: ignore[no-untyped-call]
        monitors = MonitorsApi(client)  # type: ignore[no-untyped-call]
        print(apply_dashboard(dashboards, load_json(DASHBOARD), args.dry_run))
        for path in monitor_files():
            print(apply_monitor(monitors, path, args.readme_url, args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
