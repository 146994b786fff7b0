"""The local lake's lock files (pipeline/lake.py): a shard lock is one holder at a time, even though its holder
removes the lock file as it lets go."""

from __future__ import annotations

import contextlib
import fcntl
import threading

from cogflow.pipeline import lake
from cogflow.pipeline.storage import Storage


def test_a_waiter_on_a_removed_lock_file_and_a_newcomer_never_both_hold_the_shard(tmp_path, monkeypatch):
    store = Storage.at(tmp_path / "lake")
    waiter_opened, waiter_holds, waiter_done = threading.Event(), threading.Event(), threading.Event()
    real_flock = fcntl.flock

    def flock(handle, operation):
        if threading.current_thread().name == "waiter" and operation == fcntl.LOCK_EX:
            waiter_opened.set()  # it has opened the lock file the first holder is about to remove
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock)

    def waiter() -> None:
        with lake.shard_lock(store, "s1"):
            waiter_holds.set()
            waiter_done.wait(10)

    with contextlib.ExitStack() as first_holder:
        first_holder.enter_context(lake.shard_lock(store, "s1"))
        thread = threading.Thread(target=waiter, name="waiter")
        thread.start()
        assert waiter_opened.wait(10)
    # the first holder has let go (removing its lock file): the waiter holds the shard now
    try:
        assert waiter_holds.wait(10)
        with lake.try_shard_lock(store, "s1") as newcomer_holds:  # makes a lock file anew if none is there
            assert not newcomer_holds
    finally:
        waiter_done.set()
        thread.join()
    with lake.try_shard_lock(store, "s1") as held:  # free again
        assert held
