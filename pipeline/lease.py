"""A lease on an S3 lake: one writer at a time where there is no file lock to take.

S3 has no locks, but it has conditional writes, and the lease is one small JSON object (who holds it and until
when) written only with them:

- take it: PUT with `If-None-Match: *`, which succeeds for exactly one of any number of racing takers;
- renew it: PUT with `If-Match` on the ETag the holder last wrote, which fails once anyone else has written it;
- release it: DELETE with `If-Match`, which never removes a lease that someone else has taken over;
- take over a stale one (its `expires_at` has passed: the writer was killed): PUT with `If-Match` on the stale
  ETag, so of two takers that read the same stale lease only the first write matches.

A refused write is not always someone else's: boto3 sends a request again when the answer to it was lost, and the
retry of a write that did land is refused by its own condition. So a refused take, renewal or release reads the
lease back, and one that still names this holder (`owner`) is its own.

While the holder works, a background thread renews the lease every third of its time to live. When a renewal
fails (another writer took it over), or none gets through in time, the lease is lost: from then on every write
through `S3Storage` in the holder's thread raises LeaseLost, and so does leaving the `held()` block. A holder
also stops writing a quarter of the time to live before its lease could expire, so a write it starts has that
long to land before anyone may take over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import botocore.exceptions

from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import S3Storage

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0  # a killed writer's lease blocks others this long at most
WRITER_LEASE = ".writer.lease"  # the lake's one-writer-at-a-time lease (where a local lake has .writer.lock)


class LeaseLost(RuntimeError):
    """The lease was taken over or ran out while its holder worked: the holder must stop writing."""


# The leases each thread holds, so that S3Storage can refuse a write made after its thread lost one.
_held = threading.local()


def _thread_leases() -> list[S3Lease]:
    if not hasattr(_held, "leases"):
        _held.leases = []
    return _held.leases


def check_held(root: str) -> None:
    """Raise LeaseLost when a lease this thread holds on the lake at `root` is lost or about to run out."""
    for lease in _thread_leases():
        if lease.store.root == root:
            lease.check()


@dataclass
class S3Lease:
    store: S3Storage
    rel: str  # the lease object, relative to the lake root
    purpose: str = "writer"  # said in the lease and in messages, e.g. "shard 3f2a…"
    ttl_s: float = DEFAULT_TTL_S
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    etag: str | None = None
    lost: str | None = None  # why the lease was lost, once it was
    holder: dict = field(default_factory=dict)  # the lease as another writer last held it (when taking failed)
    _valid_until: float = 0.0  # time.monotonic() after which the holder must not count on the lease
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return safe_uri(self.store.uri(self.rel))

    def _body(self, released: bool = False) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "owner": self.owner,
                "holder": f"{socket.gethostname()} pid {os.getpid()}",
                "purpose": self.purpose,
                "taken_or_renewed_at": now,
                "ttl_s": self.ttl_s,
                "expires_at": 0.0 if released else now + self.ttl_s,
            }
        ).encode()

    # -- taking ------------------------------------------------------------------------------------------------

    def _own_etag(self) -> str | None:
        """The ETag of the lease as it is now when it is this holder's (a write of its own landed, though the
        request was refused: see the module's docstring); None when another holder's or none is there."""
        current = self.store.read_with_etag(self.rel)
        if current is None or _parse(current[0]).get("owner") != self.owner:
            return None
        return current[1]

    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; False when a live holder has it (see `holder`)."""
        started = time.monotonic()
        etag = self.store.put_bytes_if(self.rel, self._body(), None)
        if etag is None:
            current = self.store.read_with_etag(self.rel)
            if current is None:
                return False  # released between the two requests: the caller tries again at once
            data, current_etag = current
            found = _parse(data)
            if found.get("owner") == self.owner:
                etag = current_etag  # its own write: the answer was lost, and the retry refused
            else:
                self.holder = found
                if self.holder.get("expires_at", 0.0) > time.time():
                    return False
                started = time.monotonic()
                # only one taker matches the stale ETag (and a retry of this very write finds the lease its own)
                etag = self.store.put_bytes_if(self.rel, self._body(), current_etag) or self._own_etag()
                if etag is None:
                    return False
                log.warning(
                    "took over the stale lease %s of %s (expired %.1f s ago)",
                    self.uri,
                    self.holder.get("holder", "an unknown writer"),
                    time.time() - self.holder.get("expires_at", 0.0),
                )
        self.etag, self.lost = etag, None
        self._valid_until = started + self.ttl_s
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"cogflow-lease-{self.purpose}", daemon=True)
        self._renewer.start()
        _thread_leases().append(self)
        return True

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Take the lease, waiting while a live holder has it (a stale one is taken over once it expires).

        False only when `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        tries = 0
        while not self.try_acquire():
            expires_at = self.holder.get("expires_at", 0.0)
            if tries == 0 and expires_at:
                log.warning(
                    "waiting for the lease %s, held by %s (%s)",
                    self.uri,
                    self.holder.get("holder", "another writer"),
                    self.holder.get("purpose", ""),
                )
            # soon at first (most holds are short), then every 2 s; never much past a live holder's expiry
            pause = min(0.05 * 2**tries, 2.0, self.ttl_s / 4, max(0.02, expires_at - time.time() + 0.02))
            tries += 1
            if deadline is not None:
                if time.monotonic() >= deadline:
                    return False
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
        return True

    # -- holding -----------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise LeaseLost when the lease is lost, or so close to running out that a write might outlive it."""
        if self.lost is None and time.monotonic() > self._valid_until - self.ttl_s / 4:
            self.lost = f"no renewal got through for {self.ttl_s * 0.75:.0f} s"
        if self.lost is not None:
            raise LeaseLost(
                f"lost the lease {self.uri} ({self.lost}): stopped writing; another writer may have the lake now"
            )

    def renew(self) -> None:
        """Extend the lease by its time to live; sets `lost` when another writer has taken it over."""
        started = time.monotonic()
        etag = self.store.put_bytes_if(self.rel, self._body(), self.etag) or self._own_etag()
        if etag is None:
            self.lost = "another writer took it over"
        elif etag != self.etag:  # (the same ETag: refused, and nothing landed; the next renewal tries again)
            self.etag, self._valid_until = etag, started + self.ttl_s

    def _renew_loop(self) -> None:
        pause = self.ttl_s / 3
        while not self._stop.wait(pause) and self.lost is None:
            try:
                self.renew()
                pause = self.ttl_s / 3
            except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                # a network error may pass: try again soon, until the lease has run out
                if time.monotonic() > self._valid_until:
                    self.lost = f"no renewal got through before it expired ({type(exc).__name__})"
                pause = min(1.0, self.ttl_s / 10)

    def release(self) -> None:
        """Stop renewing and remove the lease, unless it was lost (then it is someone else's)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with contextlib.suppress(ValueError):
            _thread_leases().remove(self)
        if self.lost is not None or self.etag is None:
            return
        try:
            gone = self.store.delete_if(self.rel, self.etag)
            if not gone:
                current = self.store.read_with_etag(self.rel)
                if current is None:
                    # this delete's own retry found nothing, unless the lease had expired before: only then may
                    # another writer have taken it over (and released it since)
                    gone = time.monotonic() < self._valid_until
                elif _parse(current[0]).get("owner") == self.owner:  # a write of its own whose answer was lost
                    gone = self.store.delete_if(self.rel, current[1])
        except botocore.exceptions.ClientError as exc:
            if S3Storage._code(exc) not in ("NotImplemented", "InvalidArgument", "InvalidRequest", "501"):
                raise
            # a store without conditional deletes: mark the lease released instead, still only if it is ours
            body = self._body(released=True)
            gone = self.store.put_bytes_if(self.rel, body, self.etag) is not None
            if not gone and (own := self._own_etag()) is not None:  # a write of its own whose answer was lost
                gone = self.store.put_bytes_if(self.rel, body, own) is not None
        if not gone:
            self.lost = "another writer took it over"
        self.etag = None

    @contextlib.contextmanager
    def held(self) -> Iterator[S3Lease]:
        """Hold the lease for the block (waiting for it first); LeaseLost at the end if it was lost meanwhile."""
        self.acquire()
        try:
            yield self
        except BaseException:
            self.release()
            raise
        self.release()
        if self.lost is not None:
            raise LeaseLost(
                f"lost the lease {self.uri} ({self.lost}) while writing: another writer may have "
                f"written at the same time; `cogflow repair --lake {safe_uri(self.store.root)}` removes "
                f"what a raced write left behind"
            )


def _parse(data: bytes) -> dict:
    """A lease's content; one that cannot be read (not written by cogflow) counts as expired."""
    try:
        body = json.loads(data)
        return body if isinstance(body, dict) and isinstance(body.get("expires_at"), (int, float)) else {}
    except ValueError:
        return {}
