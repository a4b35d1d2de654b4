"""The GC policy freezes survivors so full collections stay short, and thaws them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from livepush.gc_policy import GcPolicy


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_a_tick_freezes_what_survived() -> None:
    gc.unfreeze()
    survivors = [[i] for i in range(1000)]
    GcPolicy().tick()
    assert gc.get_freeze_count() >= len(survivors)


def test_every_thaw_period_the_frozen_objects_go_back_to_the_collector() -> None:
    policy = GcPolicy()
    ticks_per_thaw = int(GcPolicy.THAW_SECONDS / GcPolicy.FREEZE_SECONDS)
    for _ in range(ticks_per_thaw - 1):
        policy.tick()
    assert gc.get_freeze_count() > 0
    policy.tick()
    assert gc.get_freeze_count() == 0


def test_a_connect_storm_freezes_every_so_many_new_connections() -> None:
    gc.unfreeze()
    policy = GcPolicy()
    sockets = [[i] for i in range(1000)]  # stand-ins for what connections allocate
    for _ in range(GcPolicy.FREEZE_CONNECTIONS - 1):
        policy.opened()
    assert gc.get_freeze_count() == 0
    policy.opened()
    assert gc.get_freeze_count() >= len(sockets)
