"""Webhook delivery: batch end events signed as OpenAI signs them (Standard Webhooks), from the outbox.

A background thread of whichever spoolbatch process runs (``serve``, and ``run`` when httpx is
installed) finds batches that ended, writes their events to the outbox (store/outbox.py) and
sends what is due with httpx. Each attempt signs anew (``webhook-timestamp`` is the
attempt's; receivers reject old ones) under the same ``webhook-id``; its outcome is a
``webhook`` event in the job's log. Retries back off for up to 72 hours. Several processes
share the outbox safely: an entry is sent only by the one holding its lock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson

from spoolbatch.config import Config, Webhook
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.joblog import JobEvent, JobLog
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.outbox import GIVE_UP_SECONDS, Delivery, DeliveryState, due, enqueue, has_entries, retry_delay
from spoolbatch.store.rejections import Rejection
from spoolbatch.store.spool import JobEntry, Spool, Stage

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("spoolbatch.webhooks")
SEND_TIMEOUT = 10.0


def sign(secret: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _changed(entries: Iterator[JobEntry], mtimes: dict[str, float]) -> Iterator[JobEntry]:
    """The entries whose file is new or changed since the last look (``mtimes``, by path, is updated)."""
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            mtime = entry.stat().st_mtime
            key = entry.where
            if mtimes.get(key) != mtime:
                mtimes[key] = mtime
                yield entry


def ended_jobs(spool: Spool, since: float,
               mtimes: dict[str, float] | None = None) -> list[tuple[str, JobState, float]]:
    """(job, final state, when) of every batch that ended after ``since``.

    With ``mtimes`` (kept between calls) only checkpoints and reasons written since are read.
    """
    mtimes = {} if mtimes is None else mtimes
    out = []
    for entry in _changed(spool.jobs(Stage.CHECKPOINTED), mtimes):
        with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError, ValueError):
            ckpt = Checkpoint.load(entry.path)
            if ckpt is not None and ckpt.status in FINAL and (ckpt.finished_at or 0) >= since:
                out.append((ckpt.job, ckpt.status, float(ckpt.finished_at or 0)))
    for entry in _changed(spool.jobs(Stage.REJECTED), mtimes):
        rejection = Rejection.load(spool, entry.job)
        if rejection is not None and rejection.at is not None and rejection.at >= since:
            out.append((rejection.job, JobState.REJECTED, rejection.at))
    return out


class WebhookSender:
    """Turns ended batches into outbox entries and sends the due ones."""

    def __init__(self, config: Config, client: httpx.Client | None = None) -> None:
        import httpx

        self.config = config
        self.spool = Spool(config.spool)
        self.hooks = {h.url: h for h in config.webhooks}
        self.client = client or httpx.Client(timeout=SEND_TIMEOUT, follow_redirects=False)
        self._http_error = httpx.HTTPError
        self._mtimes: dict[str, float] = {}

    def scan(self, now: float | None = None) -> int:
        """Write the events of batches that ended (within the retry window) and have none yet."""
        now = time.time() if now is None else now
        urls = list(self.hooks)
        endpoints = [(h.url, h.events) for h in self.hooks.values()]
        added = 0
        for job, state, ended in ended_jobs(self.spool, now - GIVE_UP_SECONDS, self._mtimes):
            if not has_entries(self.spool, job, urls):
                added += enqueue(self.spool, job, state, ended, endpoints)
        return added

    def send_due(self, now: float | None = None) -> int:
        """Try every due delivery once; how many went through."""
        sent = 0
        for name in due(self.spool, now):
            lock = self.spool.try_lock(self.spool.outbox_lock(name))
            if lock is None:
                continue  # another process is sending it right now
            try:
                delivery = Delivery.load(self.spool, name)
                if delivery is not None and delivery.state == DeliveryState.PENDING:
                    sent += self._attempt(delivery)
            finally:
                lock.release()
        return sent

    def _attempt(self, d: Delivery) -> int:
        hook: Webhook | None = self.hooks.get(d.url)
        joblog = JobLog(self.spool.log(d.job), echo=False, max_bytes=self.config.log_max_bytes,
                        keep=self.config.log_keep)
        now = time.time()
        if hook is None:
            d.state, d.last_outcome = DeliveryState.GAVE_UP, "the endpoint is no longer configured"
            d.save(self.spool)
            joblog.event(JobEvent.WEBHOOK, d.job, event_id=d.event_id, url=d.url, attempt=d.attempts,
                         state=d.state.value, outcome=d.last_outcome)
            return 0
        ts = int(now)
        headers = {"webhook-id": d.event_id, "webhook-timestamp": str(ts),
                   "webhook-signature": sign(hook.secret_bytes(), d.event_id, ts, d.body),
                   "content-type": "application/json", "user-agent": "spoolbatch-webhooks"}
        try:
            response = self.client.post(d.url, content=d.body.encode(), headers=headers)
            ok, outcome = response.is_success, f"HTTP {response.status_code}"
        except self._http_error as exc:
            ok, outcome = False, f"{type(exc).__name__}: {exc}"[:200]
        d.attempts += 1
        d.last_outcome = outcome
        next_in = None
        if ok:
            d.state = DeliveryState.DELIVERED
        elif now - d.created_at >= GIVE_UP_SECONDS:
            d.state = DeliveryState.GAVE_UP
        else:
            next_in = retry_delay(d.attempts, self.config.webhook_backoff)
            d.next_at = now + next_in
        d.save(self.spool)
        joblog.event(JobEvent.WEBHOOK, d.job, event_id=d.event_id, url=d.url, attempt=d.attempts,
                     state=d.state.value, outcome=outcome, next_in=next_in)
        return int(ok)

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Scan and send until ``stop`` is set; an error is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.scan()
                self.send_due()
            except Exception as exc:  # noqa: BLE001 - a webhook problem never stops the server
                log.warning("webhooks: %r", exc)
            stop.wait(interval)
        self.client.close()


def start(config: Config, stop: threading.Event, interval: float = 1.0) -> threading.Thread | None:
    """Send ``config``'s webhooks from a background thread until ``stop``; None when there are none.

    Raises ``ImportError`` when httpx is missing (it comes with ``spoolbatch[serve]``).
    """
    if not config.webhooks:
        return None
    sender = WebhookSender(config)
    thread = threading.Thread(target=sender.run, args=(stop, interval), name="webhooks", daemon=True)
    thread.start()
    return thread
