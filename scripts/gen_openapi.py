"""Writes the OpenAPI document the gateway serves at /openapi.json to docs/openapi.json (a test
fails when the checked-in one is stale).

    .venv/bin/python scripts/gen_openapi.py
"""

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from magicpixels.core.bus import LocalBus
from magicpixels.core.service import Mesh
from magicpixels.core.settings import GatewaySettings, MeshSettings
from magicpixels.gateway.app import create_app
from magicpixels.gateway.state import Gateway

TARGET = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def rendered(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


async def served() -> Any:
    """The document as the gateway's app answers it (no service needs to run for that)."""
    with tempfile.TemporaryDirectory() as data_dir:
        mesh = Mesh(MeshSettings(data_dir=Path(data_dir)), LocalBus())
        try:
            app = create_app(Gateway(mesh, GatewaySettings()))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                answer = await http.get("/openapi.json")
                answer.raise_for_status()
                return answer.json()
        finally:
            await mesh.close()


def main() -> None:
    TARGET.write_text(rendered(asyncio.run(served())))
    print(f"wrote {TARGET}", file=sys.stderr)


if __name__ == "__main__":
    main()
