"""livepush.js loaded by another site's page, as the SPEC promises any site can load it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import publish
from tests.support import HOST, Server

PAGE = """<!doctype html><body><script type="module">
  const params = new URLSearchParams(location.search);
  const { subscribe } = await import(params.get("client"));
  window.__seqs = [];
  const feed = subscribe("elsewhere", { transport: params.get("via") });
  feed.on("created", (e) => window.__seqs.push(e.seq));
  feed.on("status", (s) => { document.body.dataset.status = s.status; });
</script></body>"""


class SitePage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """Another origin (another port on loopback) that serves a page using the client."""
    httpd = ThreadingHTTPServer((HOST, 0), SitePage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_another_site_receives_events(
    page: Page, server: Server, site: str, transport: str
) -> None:
    page.goto(f"{site}/live?via={transport}&client={server.base_url}/v1/livepush.js")
    expect(page.locator("body")).to_have_attribute("data-status", "live")
    entry = publish(server, "elsewhere", body="seen from another origin")
    page.wait_for_function("window.__seqs.length === 1")
    assert page.evaluate("window.__seqs") == [entry["seq"]]
