"""Webhook delivery: batch end events signed as OpenAI signs them (Standard Webhooks), from the outbox.

A background thread of the server finds batches that ended, writes their events to the
outbox (store/outbox.py) and sends what is due with httpx. Each attempt signs anew
(``webhook-timestamp`` is the attempt's; receivers reject old ones) under the same
``webhook-id``; its outcome goes to the job's log. Retries back off for up to 72 hours.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import threading
import time

import httpx
import orjson

from spoolbatch.config import Config, Webhook
from spoolbatch.store.checkpoint import Checkpoint
from spoolbatch.store.joblog import JobLog
from spoolbatch.store.jobstate import FINAL, JobState
from spoolbatch.store.outbox import GIVE_UP_SECONDS, Delivery, DeliveryState, due, enqueue, has_entries, retry_delay
from spoolbatch.store.spool import Spool

log = logging.getLogger("spoolbatch.serve")
SEND_TIMEOUT = 10.0


def sign(secret: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def ended_jobs(spool: Spool, since: float) -> list[tuple[str, JobState, float]]:
    """(job, final state, when) of every batch that ended after ``since``."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for path in spool.done.glob("*.checkpoint.json"):
            ckpt = Checkpoint.load(path)
            if ckpt is not None and ckpt.status in FINAL and (ckpt.finished_at or 0) >= since:
                out.append((ckpt.job, ckpt.status, float(ckpt.finished_at or 0)))
        for path in spool.rejected.glob("*.reason.json"):
            with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError, TypeError):
                data = orjson.loads(path.read_bytes())
                if float(data.get("at") or 0) >= since:
                    out.append((str(data["job"]), JobState.REJECTED, float(data["at"])))
    return out


class WebhookSender:
    """Turns ended batches into outbox entries and sends the due ones."""

    def __init__(self, config: Config, client: httpx.Client | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool)
        self.hooks = {h.url: h for h in config.webhooks}
        self.client = client or httpx.Client(timeout=SEND_TIMEOUT, follow_redirects=False)
        self._queued: set[str] = set()

    def scan(self, now: float | None = None) -> int:
        """Write the events of batches that ended (within the retry window) and have none yet."""
        now = time.time() if now is None else now
        urls = list(self.hooks)
        endpoints = [(h.url, h.events) for h in self.hooks.values()]
        added = 0
        for job, state, ended in ended_jobs(self.spool, now - GIVE_UP_SECONDS):
            if job in self._queued:
                continue
            if not has_entries(self.spool, job, urls):
                added += enqueue(self.spool, job, state, ended, endpoints)
            self._queued.add(job)
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
        joblog = JobLog(self.spool.log(d.job), echo=False)
        now = time.time()
        if hook is None:
            d.state, d.last_outcome = DeliveryState.GAVE_UP, "endpoint no longer in config.toml"
            d.save(self.spool)
            joblog(f"webhook {d.event_id} to {d.url}: given up, the endpoint is no longer configured")
            return 0
        ts = int(now)
        headers = {"webhook-id": d.event_id, "webhook-timestamp": str(ts),
                   "webhook-signature": sign(hook.secret_bytes(), d.event_id, ts, d.body),
                   "content-type": "application/json", "user-agent": "spoolbatch-webhooks"}
        try:
            response = self.client.post(d.url, content=d.body.encode(), headers=headers)
            ok, outcome = response.is_success, f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, outcome = False, f"{type(exc).__name__}: {exc}"[:200]
        d.attempts += 1
        d.last_outcome = outcome
        if ok:
            d.state = DeliveryState.DELIVERED
            joblog(f"webhook {d.event_id} to {d.url}: delivered on attempt {d.attempts} ({outcome})")
        elif now - d.created_at >= GIVE_UP_SECONDS:
            d.state = DeliveryState.GAVE_UP
            joblog(f"webhook {d.event_id} to {d.url}: attempt {d.attempts} failed ({outcome}); given up after 72 h")
        else:
            d.next_at = now + retry_delay(d.attempts, self.config.webhook_backoff)
            joblog(f"webhook {d.event_id} to {d.url}: attempt {d.attempts} failed ({outcome}); "
                   f"next in {d.next_at - now:.0f}s")
        d.save(self.spool)
        return int(ok)

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Scan and send until ``stop`` is set; an error is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.scan()
                self.send_due()
            except Exception as exc:  # noqa: BLE001 - a webhook problem never stops the server
                log.warning("webhooks: %r", exc)
            stop.wait(interval)
        self.client.close()
