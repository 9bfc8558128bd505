"""The turn lane (``api/lane.py``) serves the turn routes outside FastAPI's routing: their
OpenAPI document must stay what it was before the lane (a553ade), and what the lane does not
take on must be answered by the declared routes as always."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api.conftest import API, Live

SNAPSHOT = Path(__file__).parent / "snapshots" / "turn_routes_openapi.json"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "$ref" and isinstance(v, str)]
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_the_turn_routes_document_is_the_one_before_the_lane(live: Live) -> None:
    before = json.loads(SNAPSHOT.read_text())
    spec = (await live.client.get("/openapi.json")).json()

    for path, item in before["paths"].items():
        assert spec["paths"][path] == item, path
    schemas = spec["components"]["schemas"]
    reached = {ref.rsplit("/", 1)[-1] for ref in _refs(before)}
    assert reached == set(before["components"])
    for name, schema in before["components"].items():
        if name == "ErrorInfo":  # its code enum names every error of the API: it may grow
            now = schemas[name]["properties"]["code"]["enum"]
            assert set(schema["properties"]["code"]["enum"]) <= set(now)
            schema = _with_codes(schema, now)
        assert schemas[name] == schema, name


def _with_codes(schema: dict[str, Any], codes: list[str]) -> dict[str, Any]:
    """``schema`` (ErrorInfo's) with ``codes`` as its code enum."""
    code = {**schema["properties"]["code"], "enum": codes}
    return {**schema, "properties": {**schema["properties"], "code": code}}


async def test_a_body_the_lane_does_not_take_is_answered_by_the_route(live: Live) -> None:
    session_id = await live.create_session()
    url = f"{API}/session/{session_id}/message"

    as_text = await live.client.post(
        url, content=b'{"message": "hi"}', headers={"content-type": "text/plain"}
    )
    not_json = await live.client.post(
        url, content=b"{nope", headers={"content-type": "application/json"}
    )
    blank = await live.client.post(url, json={"message": ""})
    spaces = await live.client.post(url, json={"message": "   "})  # valid JSON, then stripped
    ok = await live.client.post(url, json={"message": "hi"})

    refused = (as_text, not_json, blank, spaces)
    assert [r.status_code for r in refused] == [422] * 4
    assert {r.json()["error"]["code"] for r in refused} == {"validation_error"}
    assert blank.json()["detail"][0]["loc"] == spaces.json()["detail"][0]["loc"]
    assert spaces.json()["detail"][0]["loc"] == ["body", "message"]
    assert ok.status_code == 200 and ok.json()["message_count"] == 1
