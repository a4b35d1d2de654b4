#!/usr/bin/env python3
"""Print the CPU one `httpx.AsyncClient` costs to make, with and without a shared SSL context.

    .venv/bin/python scripts/httpx_client_cost.py [--clients 200]

Why the chaos soak's readers share one trust store (`chaos_traffic.TRUST`): httpx builds
an SSL context (certifi's bundle) for every client it makes, even one that only ever
speaks plain HTTP, and each reader's snapshot load makes a client of its own.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time

import httpx


def per_client_ms(clients: int, verify: ssl.SSLContext | bool) -> float:
    """CPU milliseconds per client made (and dropped unused); `verify=True` is httpx's
    default, a context of the client's own."""
    started = time.process_time()
    for _ in range(clients):
        client = httpx.AsyncClient(timeout=5.0, verify=verify)
        del client
    return (time.process_time() - started) / clients * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    own = per_client_ms(args.clients, True)
    shared = per_client_ms(args.clients, ssl.create_default_context())
    print(
        f"httpx.AsyncClient: {own:.2f} ms of CPU each with its own SSL context, "
        f"{shared:.2f} ms with one shared; {args.clients} clients each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
