"""Telling others a batch ended: webhooks from the spool's outbox, sent by the daemon or the server (layer 2)."""
