#!/usr/bin/env python3
"""Publish a developing live-blog story to a running livepush, one entry every few seconds.

    .venv/bin/python scripts/publish_demo.py --url http://127.0.0.1:8000 --token TOKEN

Then correct one entry and retract another, as a live desk does. Bounded: it stops
after the story's entries (or --count), and every request has a timeout.
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx

STORY = [
    (
        "BREAKING",
        "Police have closed the Halvorsen Bridge in both directions after reports "
        "of a vehicle fire on the eastern span.",
    ),
    (
        "FIRE CREWS ARRIVE",
        "Four fire engines are on the bridge. Smoke is visible from the "
        "old harbour; commuters are asked to use the ferry terminal instead.",
    ),
    (
        "NO INJURIES REPORTED",
        "A fire service spokesperson says the driver of the lorry got "
        "out before the cab caught fire. Nobody else was on that stretch of the span.",
    ),
    (
        "TRAFFIC",
        "Queues now reach the ring road. The city's transport authority has added "
        "two extra ferry crossings an hour until the bridge reopens.",
    ),
    (
        "CAUSE UNDER INVESTIGATION",
        "The lorry was carrying pallets of cooking oil, according "
        "to the haulage firm. Investigators will examine the vehicle once it has cooled.",
    ),
    (
        "ONE LANE REOPENS",
        "The westbound lane has reopened under a 30 km/h limit. The eastern "
        "span stays closed for a structural inspection.",
    ),
    (
        "WHAT WE KNOW",
        "A lorry fire closed the bridge at 07:12. Nobody was hurt. One lane is "
        "open; the other awaits inspection. Ferries run extra crossings.",
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="a publisher token")
    parser.add_argument("--feed", default="demo")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between entries")
    parser.add_argument("--count", type=int, default=len(STORY))
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"}
    base = f"{args.url}/v1/feeds/{args.feed}/entries"
    ids: list[str] = []
    with httpx.Client(timeout=10) as http:
        for i in range(min(args.count, 1000)):
            title, body = STORY[i % len(STORY)]
            entry = {"title": title, "body": body, "author": "City desk", "tags": ["bridge"]}
            response = http.post(
                base, json=entry, headers={**headers, "Idempotency-Key": f"demo-{time.time_ns()}"}
            )
            if response.status_code != 201:
                print(f"publish failed: {response.status_code} {response.text}", file=sys.stderr)
                return 1
            ids.append(response.json()["id"])
            print(f"seq {response.json()['seq']:>5}  {title}")
            time.sleep(args.interval)
        if len(ids) >= 3:
            http.patch(
                f"{base}/{ids[1]}",
                json={
                    "title": "FIRE CREWS ARRIVE (corrected)",
                    "body": STORY[1][1].replace("Four", "Five"),
                },
                headers=headers,
            ).raise_for_status()
            print("corrected", ids[1])
            http.delete(f"{base}/{ids[2]}", headers=headers).raise_for_status()
            print("retracted", ids[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
