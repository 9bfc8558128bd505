"""The turn lane (``api/lane.py``) serves the turn routes, and a session's start and end,
outside FastAPI's routing: their OpenAPI document must stay what it was before the lane
(a553ade for the turn routes, 98d3e13 for the start and the end), and what the lane does not
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


async def test_a_start_or_end_the_lane_does_not_take_is_answered_by_the_route(live: Live) -> None:
    url = f"{API}/session"
    as_text = await live.client.post(
        url, content=b'{"user_id": "u1"}', headers={"content-type": "text/plain"}
    )
    not_json = await live.client.post(
        url, content=b"{nope", headers={"content-type": "application/json"}
    )
    wrong_type = await live.client.post(url, json={"user_id": 7})
    refused = (as_text, not_json, wrong_type)
    assert [r.status_code for r in refused] == [422] * 3
    assert {r.json()["error"]["code"] for r in refused} == {"validation_error"}
    assert wrong_type.json()["detail"][0]["loc"] == ["body", "user_id"]

    # The lane ends a session; with a query (purge) the route does: the same answer.
    on_lane, on_route = await live.create_session(), await live.create_session()
    ended = await live.client.delete(f"{url}/{on_lane}")
    routed = await live.client.delete(f"{url}/{on_route}", params={"purge": "false"})
    assert ended.status_code == routed.status_code == 200
    bodies = [ended.json(), routed.json()]
    for body in bodies:
        body["stats"]["duration_seconds"] = 0
    assert bodies[0] == bodies[1] and bodies[0]["message"] == "Session ended successfully"
    assert (await live.client.get(f"{url}/{on_lane}")).json()["status"] == "ended"

    # The lane's own errors are the route's: unknown session, a caller's own check.
    missing = await live.client.delete(f"{url}/no-such-session")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "session_not_found"
    unknown = await live.client.post(url, json={"user_id": "u1", "template_id": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "template_not_found"
    created = await live.client.post(url, json={"user_id": "u1", "template_id": "plain"})
    assert created.status_code == 201
    assert created.json()["success"] is True and created.json()["template_id"] == "plain"
