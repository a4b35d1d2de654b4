"""livepush.js against a scripted WebSocket server: order, duplicates, holes and reset.

The real server never sends a duplicate or a hole, so the client's own arithmetic is
proved here against a mock (Playwright's route_web_socket) that misbehaves on purpose.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from playwright.sync_api import Page, Route, WebSocketRoute

from tests.support import Server

START = """async () => {
  const { subscribe } = await import("/v1/livepush.js");
  window.__seen = [];
  window.__feed = subscribe("mock", { since: 0, epoch: "e1", transport: "ws" });
  for (const type of ["created", "updated", "deleted", "reset"]) {
    window.__feed.on(type, (value) => window.__seen.push([type, value.seq ?? value.head_seq]));
  }
}"""


def created(seq: int) -> str:
    entry = {"id": f"id{seq}", "seq": seq, "body": "x"}
    return json.dumps({"type": "entry.created", "feed": "mock", "seq": seq, "entry": entry})


class ScriptedServer:
    """Answers each WebSocket's subscription (in its URL, as livepush.js sends it, or a
    subscribe message) with the next script; keeps what clients asked for."""

    def __init__(self, *scripts: list[str]) -> None:
        self.scripts = list(scripts)
        self.subscribes: list[dict[str, Any]] = []

    def __call__(self, ws: WebSocketRoute) -> None:
        def answer(subscribe: dict[str, Any]) -> None:
            self.subscribes.append(subscribe)
            epoch = subscribe.get("epoch", "e1")
            head = {"type": "subscribed", "feed": "mock", "epoch": epoch, "head_seq": 0}
            ws.send(json.dumps(head))
            for frame in self.scripts.pop(0) if self.scripts else []:
                ws.send(frame)

        def on_message(message: str | bytes) -> None:
            sent = json.loads(message)
            if sent.get("type") == "ping":
                ws.send(json.dumps({"type": "pong"}))
            else:
                answer({**sent, "via": "message"})

        query = dict(parse_qsl(urlsplit(ws.url).query))
        if "feed" in query:
            subscribe: dict[str, Any] = {"type": "subscribe", "via": "url", **query}
            if "since" in query:
                subscribe["since"] = int(query["since"])
            answer(subscribe)
        ws.on_message(on_message)


def start(page: Page, server: Server, scripted: ScriptedServer) -> None:
    page.route_web_socket(re.compile(r".*/v1/ws.*"), scripted)
    page.goto(server.base_url + "/healthz")
    page.evaluate(START)


def seen(page: Page) -> list[list[Any]]:
    result: list[list[Any]] = page.evaluate("window.__seen")
    return result


def test_duplicates_are_dropped(page: Page, server: Server) -> None:
    start(
        page, server, ScriptedServer([created(1), created(2), created(1), created(2), created(3)])
    )
    page.wait_for_function("window.__seen.length >= 3")
    assert seen(page) == [["created", 1], ["created", 2], ["created", 3]]


def test_a_hole_is_never_delivered_past_the_client_resumes_instead(
    page: Page, server: Server
) -> None:
    scripted = ScriptedServer([created(1), created(2), created(4)], [created(3), created(4)])
    start(page, server, scripted)
    page.wait_for_function("window.__seen.length >= 4")
    assert seen(page) == [["created", 1], ["created", 2], ["created", 3], ["created", 4]]
    assert [s.get("since") for s in scripted.subscribes] == [0, 2]
    assert all(s["epoch"] == "e1" for s in scripted.subscribes)
    # Both subscriptions rode in the socket's URL: the answer comes with the upgrade.
    assert [s["via"] for s in scripted.subscribes] == ["url", "url"]


def test_reset_reloads_the_snapshot_then_resumes_from_its_head(page: Page, server: Server) -> None:
    snapshot = {"feed": "mock", "epoch": "e2", "head_seq": 7, "entries": []}

    def serve_snapshot(route: Route) -> None:
        route.fulfill(json=snapshot)

    page.route(re.compile(r".*/v1/feeds/mock/snapshot.*"), serve_snapshot)
    reset = {"type": "reset", "feed": "mock", "epoch": "e2", "head_seq": 7}
    scripted = ScriptedServer([created(1), json.dumps(reset)], [created(8)])
    start(page, server, scripted)
    page.wait_for_function("window.__seen.length >= 3")
    assert seen(page) == [["created", 1], ["reset", 7], ["created", 8]]
    assert [(s.get("since"), s.get("epoch")) for s in scripted.subscribes] == [(0, "e1"), (7, "e2")]
