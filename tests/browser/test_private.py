"""Private feeds in Chromium: livepush.js renews an expiring reader token and misses
nothing; the reader page of a private feed works inside the site that embeds it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import publish
from tests.jwts import SECRET, mint
from tests.support import HOST, Server

FEED = "members-live"
# Short-lived on purpose: each token runs out during the test, mid-subscription.
TOKEN_SECONDS = 3


@pytest.fixture
def private_server(start_server: Callable[..., Server]) -> Server:
    return start_server(LIVEPUSH_PRIVATE_FEEDS="members-*", LIVEPUSH_JWT_SECRET=SECRET)


SUBSCRIBE = """async ([transport, feed]) => {
  const { subscribe } = await import("/v1/livepush.js");
  window.__seqs = [];
  window.__unsubscribed = 0;
  const live = subscribe(feed, {
    transport,
    token: async () => await window.mintToken(),
  });
  live.on("created", (e) => window.__seqs.push(e.seq));
  live.on("unsubscribed", () => { window.__unsubscribed += 1; });
  live.on("status", (s) => { document.body.dataset.status = s.status; });
}"""


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_an_expiring_token_is_renewed_and_the_feed_continues_with_no_hole(
    page: Page, private_server: Server, transport: str
) -> None:
    minted: list[str] = []

    def mint_token() -> str:
        minted.append(mint([FEED], TOKEN_SECONDS))
        return minted[-1]

    page.expose_function("mintToken", mint_token)
    page.goto(private_server.base_url + "/healthz")
    page.evaluate(SUBSCRIBE, [transport, FEED])
    expect(page.locator("body")).to_have_attribute("data-status", "live")
    published = [publish(private_server, FEED, body="before")["seq"]]
    # Publish one entry per renewal until the page has been through two expiries.
    while page.evaluate("window.__unsubscribed") < 2:
        published.append(publish(private_server, FEED, body="during")["seq"])
        page.wait_for_function(f"window.__seqs.includes({published[-1]})", timeout=15_000)
    published.append(publish(private_server, FEED, body="after")["seq"])
    page.wait_for_function(f"window.__seqs.includes({published[-1]})")
    assert page.evaluate("window.__seqs") == published  # in order, once each, no hole
    assert len(minted) >= 3  # the first token, then one per expiry


def test_a_string_token_that_expires_ends_the_subscription_as_denied(
    page: Page, private_server: Server
) -> None:
    page.goto(private_server.base_url + "/healthz")
    page.evaluate(
        """async ([feed, token]) => {
          const { subscribe } = await import("/v1/livepush.js");
          const live = subscribe(feed, { transport: "ws", token });
          live.on("status", (s) => { document.body.dataset.status = s.status; });
        }""",
        [FEED, mint([FEED], TOKEN_SECONDS)],
    )
    expect(page.locator("body")).to_have_attribute("data-status", "live")
    expect(page.locator("body")).to_have_attribute("data-status", "denied", timeout=15_000)


EMBEDDING_SITE = """<!doctype html><body>
<iframe id="reader" src="{src}" width="600" height="400"></iframe>
<script>
  window.__asked = 0;
  addEventListener("message", async (e) => {{
    if (e.data?.type !== "livepush:token-needed") return;
    window.__asked += 1;
    const token = await window.mintToken();
    e.source.postMessage({{ type: "livepush:token", token }}, "*");
  }});
</script></body>"""


@pytest.fixture
def newsroom(page: Page, private_server: Server) -> Iterator[str]:
    """Another site (another port on loopback) whose page embeds the private feed's
    reader page with a token, minted as its page is served, and hands it fresh ones."""

    class SitePage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = mint([FEED], TOKEN_SECONDS)
            src = f"{private_server.base_url}/feeds/{FEED}?token={token}"
            body = EMBEDDING_SITE.format(src=src).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((HOST, 0), SitePage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    page.expose_function("mintToken", lambda: mint([FEED], TOKEN_SECONDS))
    yield f"http://{HOST}:{httpd.server_address[1]}/live"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_the_reader_page_of_a_private_feed_works_when_the_site_embedding_it_hands_it_tokens(
    page: Page, private_server: Server, newsroom: str
) -> None:
    page.goto(newsroom)
    reader = page.frame_locator("#reader")
    expect(reader.locator(".lp-status")).to_have_attribute("data-status", "live", timeout=15_000)
    frame = page.frame(url=lambda url: url.startswith(private_server.base_url))
    assert frame is not None
    assert "token=" not in frame.evaluate("location.href")  # dropped from the address bar
    first = publish(private_server, FEED, body="for members")
    expect(reader.locator(f"article[data-id='{first['id']}']")).to_be_visible(timeout=15_000)
    # The page's token runs out: it asks the embedding site, which answers.
    page.wait_for_function("window.__asked >= 1", timeout=15_000)
    second = publish(private_server, FEED, body="still for members")
    expect(reader.locator(f"article[data-id='{second['id']}']")).to_be_visible(timeout=15_000)
    expect(reader.locator(".lp-status")).to_have_attribute("data-status", "live", timeout=15_000)
