"""Pages and logs that hold up against hostile sites: security headers, no token in a log."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from livepush import cli
from livepush.config import Settings
from livepush.logs import redact
from livepush.transports import listeners
from tests.jwts import SECRET, mint
from tests.support import Server, wait_until


@pytest.fixture(scope="module")
def chatty() -> Iterator[Server]:
    """A server at log level debug (with access logs), one private feed."""
    server = Server(LIVEPUSH_PRIVATE_FEEDS="vip", LIVEPUSH_JWT_SECRET=SECRET)
    try:
        yield server.start(["--log-level", "debug"])
    finally:
        server.stop()


def script_nonce(html: str) -> str:
    found = re.search(r'<script type="module" nonce="([^"]+)">', html)
    assert found, "the inline module script carries a nonce"
    return found.group(1)


def policy(response: httpx.Response) -> dict[str, str]:
    directives = response.headers["content-security-policy"].split(";")
    return {d.split()[0]: d.strip().partition(" ")[2] for d in directives if d.strip()}


@pytest.mark.parametrize("path", ["/", "/feeds/demo", "/editor"])
def test_pages_allow_only_their_own_scripts_and_the_one_inline_script_by_nonce(
    chatty: Server, path: str
) -> None:
    first = httpx.get(chatty.base_url + path)
    second = httpx.get(chatty.base_url + path)
    assert first.status_code == 200
    csp = policy(first)
    assert csp["script-src"] == f"'self' 'nonce-{script_nonce(first.text)}'"
    assert script_nonce(first.text) != script_nonce(second.text)  # one per response
    assert csp["default-src"] == "'none'"
    assert csp["object-src" if "object-src" in csp else "default-src"] == "'none'"
    assert csp["base-uri"] == "'none'"
    assert first.headers["x-content-type-options"] == "nosniff"
    assert first.headers["referrer-policy"] == "no-referrer"


def test_the_editor_cannot_be_framed(chatty: Server) -> None:
    editor = httpx.get(chatty.base_url + "/editor")
    assert policy(editor)["frame-ancestors"] == "'none'"
    assert editor.headers["x-frame-options"] == "DENY"


def test_the_reader_page_may_be_embedded(chatty: Server) -> None:
    reader = httpx.get(chatty.base_url + "/feeds/demo")
    assert policy(reader)["frame-ancestors"] == "*"
    assert "x-frame-options" not in reader.headers


def test_the_editor_template_is_not_served_bare_from_static(chatty: Server) -> None:
    # Without its headers it would be a console any site could frame.
    assert httpx.get(chatty.base_url + "/static/editor.html").status_code == 404
    assert httpx.get(chatty.base_url + "/static/editor.js").status_code == 200


@pytest.mark.parametrize("path", ["/v1/feeds/demo", "/healthz", "/v1/livepush.js", "/nope"])
def test_every_response_says_nosniff(chatty: Server, path: str) -> None:
    assert httpx.get(chatty.base_url + path).headers["x-content-type-options"] == "nosniff"


def test_a_token_in_a_query_string_never_reaches_the_access_log(chatty: Server) -> None:
    token = mint(["vip"])
    for path in ("/v1/feeds/vip/snapshot", "/feeds/vip"):
        response = httpx.get(chatty.base_url + path, params={"limit": "5", "token": token})
        assert response.status_code == 200
    wait_until(lambda: "token=[redacted]" in chatty.log.read_text(), what="the access log")
    log = chatty.log.read_text()
    assert token not in log
    assert token.split(".")[2] not in log  # not even its signature
    assert "GET /v1/feeds/vip/snapshot?limit=5&token=[redacted]" in log


@pytest.mark.parametrize(
    ("path", "redacted"),
    [
        ("/x?token=abc", "/x?token=[redacted]"),
        ("/x?a=1&token=abc&b=2", "/x?a=1&token=[redacted]&b=2"),
        ("/x?TOKEN=abc", "/x?TOKEN=[redacted]"),
        ("/x?mytoken=abc", "/x?mytoken=abc"),  # another parameter
        ("/token=abc", "/token=abc"),  # a path, not a query
        ("/x?token=a&token=b", "/x?token=[redacted]&token=[redacted]"),
    ],
)
def test_redact_takes_out_every_token_parameter_and_nothing_else(path: str, redacted: str) -> None:
    assert redact(path) == redacted


def test_a_public_address_without_an_origin_allow_list_is_warned_about() -> None:
    open_to_all = Settings(host="0.0.0.0", publish_tokens=("t",))
    assert any("Origin allow-list" in warning for warning in open_to_all.warnings())
    allowed = Settings(host="0.0.0.0", publish_tokens=("t",), allowed_origins=("https://a.b",))
    assert allowed.warnings() == []
    assert Settings().warnings() == []  # loopback


def test_serve_warns_at_start_up_and_logs_through_the_redacting_formatter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[uvicorn.Config] = []
    monkeypatch.setattr(listeners, "run", ran.append)  # the config, not a server
    # serve() tells worker processes its flags through os.environ: give it a copy.
    clean = {name: value for name, value in os.environ.items() if not name.startswith("LIVEPUSH_")}
    monkeypatch.setattr(os, "environ", clean)
    argv = ["serve", "--host", "0.0.0.0", "--publish-token", "t", "--no-demo"]
    assert cli.main(argv) == 0
    assert "warning: bound to 0.0.0.0 with no Origin allow-list" in capsys.readouterr().err
    (config,) = ran
    assert isinstance(config.log_config, dict)
    formatter = config.log_config["formatters"]["access"]["()"]
    assert formatter == "livepush.logs.RedactingAccessFormatter"
    assert config.log_config["loggers"]["livepush.audit"]["level"] == "INFO"
