"""Tests for testkit.rtdb_server, driven through the real firebase-admin SDK."""

from __future__ import annotations

import json
import re
import selectors
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import firebase_admin
import pytest
import requests
from firebase_admin import db, exceptions

from testkit.rtdb_server import PUSH_CHARS, PushIdGenerator, RTDBServer

NS = "chatify-test"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[RTDBServer]:
    with RTDBServer() as srv:
        yield srv


def make_app(database_url: str, timeout: float = 5) -> firebase_admin.App:
    return firebase_admin.initialize_app(
        options={"databaseURL": database_url, "httpTimeout": timeout},
        name=f"rtdb-test-{uuid.uuid4().hex}",
    )


@pytest.fixture
def app(server: RTDBServer) -> Iterator[firebase_admin.App]:
    fb_app = make_app(server.database_url(NS))
    yield fb_app
    firebase_admin.delete_app(fb_app)


@pytest.fixture
def root(app: firebase_admin.App) -> db.Reference:
    return db.reference("/", app=app)


def rest(
    server: RTDBServer, method: str, path: str, query: str = "", **kwargs: Any
) -> requests.Response:
    url = f"{server.url}{path}.json?ns={NS}" + (f"&{query}" if query else "")
    return requests.request(method, url, timeout=5, **kwargs)


# ----------------------------------------------------------------------------- basic data


def test_set_get_and_nested_paths(server: RTDBServer, root: db.Reference) -> None:
    root.child("users/u1").set({"name": "Ada", "tags": ["a", "b"], "score": 1.0})
    assert root.child("users/u1/name").get() == "Ada"
    assert root.child("users").get() == {"u1": {"name": "Ada", "tags": ["a", "b"], "score": 1}}
    assert root.child("missing/path").get() is None
    assert server.get_data(NS, "/users/u1/tags") == ["a", "b"]
    assert server.get_data("other-ns") is None


def test_nulls_and_empty_objects_vanish(server: RTDBServer, root: db.Reference) -> None:
    root.child("a").set({"b": {"c": 1}, "empty": {}, "nothing": None})
    assert server.get_data(NS) == {"a": {"b": {"c": 1}}}
    root.child("a/b/c").delete()
    assert root.get() is None
    assert server.get_data(NS) is None


def test_arrays_render_like_rtdb(server: RTDBServer, root: db.Reference) -> None:
    root.child("dense").set([10, 20, 30])
    root.child("mostly").set({"0": "a", "2": "c"})
    root.child("sparse").set({"0": "a", "5": "f"})
    assert root.child("dense").get() == [10, 20, 30]
    assert root.child("mostly").get() == ["a", None, "c"]
    assert root.child("sparse").get() == {"0": "a", "5": "f"}
    assert root.child("dense/1").get() == 20


def test_namespaces_are_separate(server: RTDBServer, root: db.Reference) -> None:
    other = make_app(server.database_url("other"))
    try:
        root.child("k").set("mine")
        db.reference("/k", app=other).set("theirs")
        assert root.child("k").get() == "mine"
        assert server.get_data("other", "/k") == "theirs"
    finally:
        firebase_admin.delete_app(other)


def test_emulator_host_env_var_uses_first_host_label(
    server: RTDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREBASE_DATABASE_EMULATOR_HOST", f"127.0.0.1:{server.port}")
    env_app = make_app("https://chatify-env.firebaseio.com")
    try:
        db.reference("/x", app=env_app).set(1)
    finally:
        firebase_admin.delete_app(env_app)
    assert server.get_data("chatify-env", "/x") == 1
    assert server.requests[-1].params["ns"] == "chatify-env"


def test_direct_data_access_and_reset(server: RTDBServer, root: db.Reference) -> None:
    server.set_data(NS, "/seed/x", {"y": [1, 2]})
    assert root.child("seed/x/y").get() == [1, 2]
    server.set_data(NS, "/seed/x", None)
    assert server.get_data(NS, "/seed") is None
    server.set_data(NS, "/k", 1)
    server.faults.add(status=400, times=None)
    server.reset()
    assert server.get_data(NS) is None
    assert server.faults.active == [] and server.requests == []


def test_server_values(root: db.Reference) -> None:
    before = int(time.time() * 1000)
    root.child("t").set({".sv": "timestamp"})
    root.child("n").set(5)
    root.child("n").set({".sv": {"increment": 2}})
    assert before <= root.child("t").get() <= int(time.time() * 1000)
    assert root.child("n").get() == 7


# ----------------------------------------------------------------------------- update / push


def test_multi_path_update(server: RTDBServer, root: db.Reference) -> None:
    root.set({"a": {"b": 0, "keep": True}, "gone": {"x": 1}})
    root.update({"a/b": 1, "c/d/e": {"x": 2}, "gone/x": None})
    assert root.get() == {"a": {"b": 1, "keep": True}, "c": {"d": {"e": {"x": 2}}}}
    assert server.requests[-2].params["print"] == "silent"


def test_multi_path_update_is_all_or_nothing(root: db.Reference) -> None:
    root.set({"a": 1})
    with pytest.raises(exceptions.InvalidArgumentError):
        root.update({"a": 2, "bad": {"in.valid": 1}})
    with pytest.raises(exceptions.InvalidArgumentError, match="ancestor"):
        root.update({"a": 3, "x": 1, "x/y": 2})
    assert root.get() == {"a": 1}


def test_multi_path_update_is_atomic_for_readers(server: RTDBServer, root: db.Reference) -> None:
    root.update({"left/v": 0, "right/v": 0})
    torn: list[Any] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            snapshot = server.get_data(NS)
            if snapshot["left"]["v"] != snapshot["right"]["v"]:
                torn.append(snapshot)
            time.sleep(0)  # let the writer's server thread run

    thread = threading.Thread(target=reader)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often so a torn write would be observed
    thread.start()
    try:
        for i in range(1, 100):
            root.update({"left/v": i, "right/v": i})
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert torn == []


def test_push_ids_are_firebase_style_and_ordered(server: RTDBServer, root: db.Reference) -> None:
    keys = [root.child("msgs").push({"i": i}).key for i in range(30)]
    assert keys == sorted(keys) and len(set(keys)) == 30
    assert all(len(k) == 20 and set(k) <= set(PUSH_CHARS) for k in keys)
    millis = 0
    for char in keys[0][:8]:
        millis = millis * 64 + PUSH_CHARS.index(char)
    assert abs(millis - time.time() * 1000) < 5000
    assert list(root.child("msgs").get()) == keys
    post = server.requests[-2]
    assert post.method == "POST" and "print" not in post.params


def test_push_id_generator_monotonic_within_one_millisecond() -> None:
    generator = PushIdGenerator(clock=lambda: 1_700_000_000_000, seed=1)
    ids = [generator.next_id() for _ in range(500)]
    assert ids == sorted(ids) and len(set(ids)) == 500
    assert len({i[:8] for i in ids}) == 1
    generator._last_rand = [63] * 12  # force overflow of the random part
    assert generator.next_id() > ids[-1]


# ----------------------------------------------------------------------------- etags


def test_transaction_with_concurrent_threads(server: RTDBServer, root: db.Reference) -> None:
    counter = root.child("counter")
    counter.set(0)

    def work() -> None:
        for _ in range(20):
            counter.transaction(lambda value: (value or 0) + 1)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.get() == 100
    puts = [r for r in server.requests if r.method == "PUT" and r.path == "/counter"]
    assert all("if-match" in r.headers for r in puts[1:])


def test_set_if_unchanged(root: db.Reference) -> None:
    ref = root.child("doc")
    ref.set({"v": 1})
    value, etag = ref.get(etag=True)
    assert value == {"v": 1} and etag
    ok, new_value, new_etag = ref.set_if_unchanged(etag, {"v": 2})
    assert ok and new_value == {"v": 2} and new_etag != etag
    ok, current, current_etag = ref.set_if_unchanged(etag, {"v": 3})
    assert not ok and current == {"v": 2} and current_etag == new_etag
    assert ref.get() == {"v": 2}


def test_get_if_changed(server: RTDBServer, root: db.Reference) -> None:
    ref = root.child("doc")
    ref.set({"v": 1})
    _, etag = ref.get(etag=True)
    server.clear_requests()
    assert ref.get_if_changed(etag) == (False, None, None)
    (entry,) = server.requests
    assert entry.status == 304 and entry.response_size == 0
    ref.set({"v": 2})
    changed, value, new_etag = ref.get_if_changed(etag)
    assert changed and value == {"v": 2} and new_etag not in (None, etag)


def test_etags_of_null_are_stable_and_delete_honours_if_match(server: RTDBServer) -> None:
    headers = {"X-Firebase-ETag": "true"}
    first = rest(server, "GET", "/nothing", headers=headers).headers["ETag"]
    assert rest(server, "GET", "/also/nothing", headers=headers).headers["ETag"] == first
    rest(server, "PUT", "/x", json={"a": 1})
    stale = rest(server, "DELETE", "/x", headers={"if-match": first})
    assert stale.status_code == 412 and stale.json() == {"a": 1} and stale.headers["ETag"]
    fresh = rest(server, "DELETE", "/x", headers={"if-match": stale.headers["ETag"]})
    assert fresh.status_code == 200 and fresh.headers["ETag"] == first
    assert server.get_data(NS, "/x") is None


# ----------------------------------------------------------------------------- queries


def test_order_by_key_limits_and_ranges(server: RTDBServer, root: db.Reference) -> None:
    root.child("m").set({k: k.upper() for k in ("a", "b", "c", "d", "e")})
    assert list(root.child("m").order_by_key().limit_to_last(2).get()) == ["d", "e"]
    # A limit larger than what the range holds returns all of it.
    assert list(root.child("m").order_by_key().end_at("b").limit_to_last(5).get()) == ["a", "b"]
    assert list(root.child("m").order_by_key().limit_to_first(2).get()) == ["a", "b"]
    assert list(root.child("m").order_by_key().start_at("b").end_at("d").get()) == ["b", "c", "d"]
    assert dict(root.child("m").order_by_key().equal_to("c").get()) == {"c": "C"}
    query = server.requests[-1].params
    assert query["orderBy"] == '"$key"' and query["equalTo"] == '"c"'


def test_order_by_key_puts_integer_keys_first(root: db.Reference) -> None:
    root.child("k").set({"b": 1, "10": 1, "9": 1, "a": 1})
    assert set(root.child("k").order_by_key().limit_to_first(2).get()) == {"9", "10"}


def test_order_by_child(root: db.Reference) -> None:
    root.child("s").set(
        {
            "s1": {"meta": {"score": 5}, "email": "x+y@z.com"},
            "s2": {"meta": {"score": 1}},
            "s3": {"meta": {"score": "high"}},
            "s4": {"meta": {"score": True}},
            "s5": {"other": 1},
            "s6": {"meta": {"score": 5}},
        }
    )
    scores = root.child("s").order_by_child("meta/score")
    assert list(scores.get()) == ["s5", "s4", "s2", "s1", "s6", "s3"]
    assert list(root.child("s").order_by_child("meta/score").limit_to_last(2).get()) == ["s6", "s3"]
    assert list(root.child("s").order_by_child("meta/score").start_at(2).end_at(9).get()) == [
        "s1",
        "s6",
    ]
    assert list(root.child("s").order_by_child("email").equal_to("x+y@z.com").get()) == ["s1"]


def test_order_by_value(root: db.Reference) -> None:
    root.child("v").set({"a": 3, "b": "z", "c": 1, "d": False})
    assert list(root.child("v").order_by_value().start_at(1).limit_to_first(2).get()) == ["c", "a"]


def test_shallow_get(root: db.Reference) -> None:
    root.child("sh").set({"a": {"deep": 1}, "b": 2})
    assert root.child("sh").get(shallow=True) == {"a": True, "b": True}
    assert root.child("sh/b").get(shallow=True) == 2


def test_delete(root: db.Reference) -> None:
    root.set({"a": 1, "b": 2})
    root.child("a").delete()
    assert root.get() == {"b": 2}


def test_print_silent_is_used_for_set_and_update(server: RTDBServer, root: db.Reference) -> None:
    root.child("p").set({"v": 1})
    root.child("p").update({"w": 2})
    for entry in server.requests:
        assert entry.params["print"] == "silent"
        assert entry.status == 204 and entry.response_size == 0
    response = rest(server, "GET", "/p", "print=silent")
    assert response.status_code == 204 and response.content == b""


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "query", "body"),
    [
        ("PUT", "", b"{not json"),
        ("PATCH", "", b"[1, 2]"),
        ("GET", "shallow=true&limitToFirst=1&orderBy=%22$key%22", b""),
        ("GET", "limitToFirst=1", b""),
        ("GET", "orderBy=$key", b""),
        ("GET", 'orderBy="$key"&limitToFirst=-1', b""),
        ("GET", 'orderBy="$key"&limitToFirst=1&limitToLast=1', b""),
        ("GET", 'orderBy="$key"&startAt=3', b""),
    ],
)
def test_bad_requests_get_json_errors(
    server: RTDBServer, method: str, query: str, body: bytes
) -> None:
    response = rest(server, method, "/x", query, data=body)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_bad_path_is_rejected(server: RTDBServer) -> None:
    response = requests.get(f"{server.url}/a$b.json?ns={NS}", timeout=5)
    assert response.status_code == 400 and "error" in response.json()


# ----------------------------------------------------------------------------- faults


def test_fault_makes_sdk_raise_and_respects_filters(server: RTDBServer, root: db.Reference) -> None:
    server.faults.add(
        status=400, times=1, methods={"PATCH"}, path_prefix="/userSessions", body={"error": "boom"}
    )
    root.child("userSessionsX").update({"a": 1})
    root.child("userSessions/s1").set({"a": 1})
    with pytest.raises(exceptions.InvalidArgumentError, match="boom"):
        root.child("userSessions/s1").update({"a": 2})
    root.child("userSessions/s1").update({"a": 3})
    assert root.child("userSessions/s1/a").get() == 3
    assert [r.faulted for r in server.requests] == [False, False, True, False, False]


def test_fault_until_cleared(server: RTDBServer, root: db.Reference) -> None:
    server.faults.add(status=412, times=None)
    for _ in range(3):
        with pytest.raises(exceptions.FailedPreconditionError):
            root.get()
    server.faults.clear()
    assert root.get() is None


def test_503_is_retried_by_the_sdk(server: RTDBServer, root: db.Reference) -> None:
    server.faults.add(status=503, times=1)
    root.child("r").set(1)
    assert [r.status for r in server.requests] == [503, 204]


def test_401_is_retried_by_google_auth_session(server: RTDBServer, root: db.Reference) -> None:
    server.faults.add(status=401, times=None)
    with pytest.raises(exceptions.UnauthenticatedError):
        root.get()
    assert [r.status for r in server.requests] == [401, 401, 401]


def test_dropped_connections(server: RTDBServer, root: db.Reference) -> None:
    server.faults.add(drop=True, times=1)
    assert root.get() is None
    server.faults.add(drop=True, times=2)
    with pytest.raises(exceptions.UnavailableError):
        root.get()
    assert [r.status for r in server.requests] == [None, 200, None, None]


def test_delay_fault_triggers_client_timeout(server: RTDBServer) -> None:
    slow_app = make_app(server.database_url(NS), timeout=0.2)
    try:
        server.faults.add(delay=0.4, times=2)
        started = time.monotonic()
        with pytest.raises(exceptions.UnavailableError, match="timed out"):
            db.reference("/", app=slow_app).get()
        assert 0.35 < time.monotonic() - started < 1.5
    finally:
        firebase_admin.delete_app(slow_app)


def test_gate_fault_holds_requests_until_released(server: RTDBServer, root: db.Reference) -> None:
    gate = threading.Event()
    server.faults.add(gate=gate, times=None, path_prefix="/held")
    root.child("free").set(1)  # other paths are not held
    writer = threading.Thread(target=lambda: root.child("held").set(2))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive() and [r.path for r in server.requests] == ["/free"]
    gate.set()
    writer.join(10)
    assert not writer.is_alive() and root.child("held").get() == 2


# ----------------------------------------------------------------------------- transport


def test_request_log_records_body_sizes(server: RTDBServer, root: db.Reference) -> None:
    value = {"text": "héllo", "n": [1, 2, 3]}
    root.child("log/a").set(value)
    root.child("log").get()
    put, get = server.requests
    assert (put.method, put.path, put.namespace) == ("PUT", "/log/a", NS)
    assert put.body_size == len(json.dumps(value).encode())
    assert (get.method, get.path, get.body_size, get.status) == ("GET", "/log", 0, 200)
    assert get.response_size == len(b'{"a":{"text":"h\xc3\xa9llo","n":[1,2,3]}}')
    server.clear_requests()
    assert server.requests == []


def test_keep_alive_and_low_latency(server: RTDBServer) -> None:
    with requests.Session() as session:
        started = time.monotonic()
        for i in range(60):
            response = session.put(f"{server.url}/k.json?ns={NS}", json=i, timeout=5)
            assert response.status_code == 200
        elapsed = time.monotonic() - started
    assert server.connection_count == 1
    assert {r.connection_id for r in server.requests} == {1}
    assert elapsed < 1.0, f"60 keep-alive requests took {elapsed:.2f}s (Nagle stall?)"


def test_standalone_process_mode() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "testkit.rtdb_server", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _wait_for_listening(proc)
        fb_app = make_app(f"{url}?ns=standalone")
        try:
            db.reference("/hello", app=fb_app).set({"from": "subprocess"})
            assert db.reference("/hello/from", app=fb_app).get() == "subprocess"
        finally:
            firebase_admin.delete_app(fb_app)
    finally:
        proc.terminate()
        stdout, _ = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert stdout == ""


def _wait_for_listening(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if selector.select(timeout=deadline - time.monotonic()):
            line = proc.stderr.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                return match.group(1)
            if not line:
                break
    raise AssertionError("standalone server did not report listening")
