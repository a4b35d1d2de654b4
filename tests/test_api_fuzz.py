"""schemathesis against a live server's own /v1/openapi.json: every operation, positive
and negative cases. Never a 500; every answer is one the document describes, so every
error is a JSON body carrying the code documented for its status.

The number of examples per operation is bounded (MAX_EXAMPLES, plus schemathesis'
coverage phase, which adds each parameter's boundary and invalid values once), so
the run takes seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from livepush.openapi import BAD_SINCE, ERROR_CODES, openapi
from tests.jwts import SECRET
from tests.support import Server

MAX_EXAMPLES = 15
CONFIG = f"""
# An event stream never ends by itself: its first event (subscribed, or reset) is read
# and checked, then the stream is let go.
max-stream-events = 1

[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
deterministic = true

[phases.stateful]
enabled = false

# An entry whose text is over the SPEC's limit is 413 once its JSON is over 64 KiB.
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]

# `publish_at` must be in the future and at most 30 days ahead, which a schema cannot
# say: a generated date-time is mostly in the past, and refused (422) as documented.
[[operations]]
include-operation-id = ["publish", "reschedule"]
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "401", "403", "404", "409", "422", "429", "5xx",
]
"""


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Server]:
    # `vip` is private: reads of it answer 401 to schemathesis' anonymous cases.
    server = Server(LIVEPUSH_PRIVATE_FEEDS="vip", LIVEPUSH_JWT_SECRET=SECRET)
    try:
        yield server.start()
    finally:
        server.stop()


# The document the server serves (tests/test_api_documents.py checks it is this one),
# loaded at import: schemathesis makes one test per operation at collection time.
schema = schemathesis.openapi.from_dict(openapi(), config=SchemathesisConfig.from_str(CONFIG))


def error_codes_are_the_documented_ones(ctx: Any, response: Any, case: Any) -> bool | None:
    """A JSON error carries the code documented for its status (readyz's 503 is a status)."""
    if response.status_code < 400 or case.path == "/readyz":
        return None
    body = response.json()
    code = body["error"]["code"]
    allowed = {ERROR_CODES[response.status_code][0]}
    if response.status_code == 400 and case.path.endswith("/events"):
        allowed = {BAD_SINCE[0]}
    assert code in allowed, f"{response.status_code} with code {code!r}, not {allowed}"
    assert isinstance(body["error"]["message"], str)
    return True


@schema.parametrize()
def test_every_operation_answers_as_documented(case: Any, fuzzed: Server) -> None:
    headers = fuzzed.headers() if case.operation.method.upper() != "GET" else {}
    case.call_and_validate(
        base_url=fuzzed.base_url,
        headers=headers,
        timeout=10,
        additional_checks=[error_codes_are_the_documented_ones],
    )
