"""Who is alive, and when queued work needs re-dispatching (distributed mode).

Redis holds only "work is waiting" signals (the work itself is in the database), and
some are lost when:

* Redis restarts (its queue is not persisted) or a node could not reach it (publishes
  failed: the messages are committed but were never announced);
* a ``serve`` process dies between committing a message and publishing its task;
* a ``worker`` is killed: the tasks it had taken stay unacknowledged in Redis until the
  visibility timeout (an hour).

The database still has the work, and the sweeper finds it after its grace period. To
start recovery within seconds instead, every ``serve`` and ``worker`` process announces
itself with a Redis key that expires ``TTL`` seconds after its last beat, and removes it
on a clean stop, leaving a goodbye (a clean stop publishes or hands back what it holds).
Each ``serve`` process watches, once a ``BEAT``:

* Redis's ``run_id`` (INFO server): a new one means Redis restarted;
* whether Redis answered the previous beat: reachable again after an outage;
* the set of members: one gone without a goodbye died.

and then calls ``on_recovery(reason)`` (the sweeper's ``wake``: re-dispatch everything
pending now, whatever its age). With two ``serve`` nodes both see the same event; a
``SET NX`` claim lets one of them sweep (a second sweep would be harmless: every task
is idempotent, but it doubles the queue).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import redis

from broker.outage import Outage, describe_redis

log = logging.getLogger(__name__)

PREFIX = "mwlb:presence:"
GOODBYE = "mwlb:goodbye:"
CLAIM = "mwlb:recovery:"
BEAT = 1.0  # seconds between beats
TTL = 4.0  # a member silent this long is gone


class Presence(threading.Thread):
    """Announce this process; with ``on_recovery``, also watch (see the module doc)."""

    def __init__(self, url: str, role: str,
                 on_recovery: Callable[[str], None] | None = None, *,
                 beat: float = BEAT, ttl: float = TTL) -> None:
        super().__init__(name="mwl-presence", daemon=True)
        self.member = f"{role}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.on_recovery = on_recovery
        self.beat, self.ttl = beat, ttl
        self.health = Outage("task broker (Redis)", log)
        self._stop_event = threading.Event()
        self._run_id: str | None = None
        self._members: set[str] | None = None
        self._unreachable = False

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._beat()
            except redis.RedisError as exc:
                self.health.failed(describe_redis(exc))
                self._unreachable = True
            self._stop_event.wait(self.beat)

    def _beat(self) -> None:
        self.client.set(PREFIX + self.member, "1", px=int(self.ttl * 1000))
        if self.on_recovery is None:
            self.health.ok()
            return
        run_id = str(self.client.info("server").get("run_id", ""))
        members = {k.decode()[len(PREFIX):] for k in self.client.scan_iter(PREFIX + "*", 1000)}
        self.health.ok()
        if self._run_id is not None and run_id != self._run_id:
            self._recover(f"restart:{run_id}", "Redis restarted (its queue is lost)")
            self._members = None  # every key went with it
        elif self._unreachable:
            self._recover(None, "Redis reachable again (tasks may not have been published)")
        elif self._members is not None:
            for gone in sorted(self._members - members - {self.member}):
                if not self.client.exists(GOODBYE + gone):
                    self._recover(f"gone:{gone}", f"{gone.split(':')[0]} process {gone} "
                                  "stopped without notice (its tasks may be stranded)")
        self._run_id, self._unreachable = run_id, False
        self._members = members

    def _recover(self, event: str | None, reason: str) -> None:
        """Sweep for ``reason``; an ``event`` every watcher sees is claimed by one."""
        if event is not None and not self.client.set(CLAIM + event, self.member, nx=True,
                                                     ex=60):
            return
        log.warning("re-dispatching pending work now: %s", reason)
        if self.on_recovery is not None:
            self.on_recovery(reason)

    def stop(self) -> None:
        """Leave cleanly: a goodbye, so the watchers do not take this for a crash."""
        self._stop_event.set()
        self.join(5)
        try:
            self.client.set(GOODBYE + self.member, "1", ex=60)
            self.client.delete(PREFIX + self.member)
        except redis.RedisError:
            pass  # Redis is away: the key expires; a spurious sweep is harmless
        self.client.close()
