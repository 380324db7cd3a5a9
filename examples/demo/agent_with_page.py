"""The unchanged example FastAPI agent, plus its chat page and the RUM SDK bundles on the same origin.

Many agent services serve their own chat UI; doing the same here keeps the page and `/chat` on one origin
(the proxy's), which the cookie source needs, without an extra hop. The agent module itself is imported
as is: no line of it knows about RUM. Run under ddtrace-run with the hook on PYTHONPATH, like the agent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).resolve().parent
AGENT_APP = HERE.parent / "agents" / "fastapi" / "app.py"
WEB = HERE / "web"
RUM_VERSIONS = ("5", "6", "7")


def load_agent(path: Path = AGENT_APP) -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_agent", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def page_config() -> dict[str, object]:
    """What the page needs to know, from the environment run.py sets (nothing secret: RUM tokens are public)."""
    return {
        "consoleUrl": os.environ.get("DEMO_CONSOLE_URL", ""),
        "rum": {
            "applicationId": os.environ.get("DEMO_RUM_APPLICATION_ID", "00000000-0000-4000-8000-000000000000"),
            "clientToken": os.environ.get("DEMO_RUM_CLIENT_TOKEN", "pub00000000000000000000000000000000"),
            "site": os.environ.get("DEMO_RUM_SITE", "datadoghq.com"),
            # Empty when real RUM credentials are given: events then go to Datadog, not the local intake.
            "intake": os.environ.get("DEMO_RUM_INTAKE_URL", ""),
        },
    }


def add_page(app: FastAPI) -> FastAPI:
    config_js = "window.DEMO_CONFIG = " + json.dumps(page_config()) + ";\n"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/demo-config.js", include_in_schema=False)
    def demo_config() -> Response:
        return Response(config_js, media_type="text/javascript", headers={"Cache-Control": "no-store"})

    @app.get("/rum/{version}/datadog-rum.js", include_in_schema=False)
    def rum_bundle(version: str) -> FileResponse:
        if version not in RUM_VERSIONS:
            raise HTTPException(status_code=404)
        bundle = WEB / "node_modules" / f"rum{version}" / "bundle" / "datadog-rum.js"
        if not bundle.is_file():
            raise HTTPException(status_code=404, detail=f"run `npm ci` in {WEB}")
        return FileResponse(bundle, media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    return app


app = add_page(load_agent().app)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8001")))
