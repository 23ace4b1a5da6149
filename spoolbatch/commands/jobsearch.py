"""Finding batches by status and by words of their id or metadata: the web page's filter and search."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from spoolbatch.commands.batches import BatchView


def openai_status(view: BatchView) -> str:
    """The batch object's ``status`` of a view."""
    return view.state.openai_status(cancelling=view.cancelling_at is not None)


def matches(view: BatchView, statuses: frozenset[str], text: str) -> bool:
    """True when the batch has one of ``statuses`` (any, when empty) and ``text`` (case-insensitive) is in
    its job or batch id, a metadata key or value, or ``key=value`` of a metadata pair."""
    if statuses and openai_status(view) not in statuses:
        return False
    if not text:
        return True
    needle = text.lower()
    metadata = view.record.metadata if view.record is not None and view.record.metadata else {}
    hay = [view.id, *metadata, *metadata.values(), *(f"{k}={v}" for k, v in metadata.items())]
    return any(needle in s.lower() for s in hay)


def matcher(statuses: Iterable[str] = (), text: str | None = None) -> Callable[[BatchView], bool]:
    """The test ``matches`` makes of a filter's statuses and words."""
    wanted = frozenset(s.strip() for s in statuses if s.strip())
    words = (text or "").strip()
    return lambda view: matches(view, wanted, words)


def search(views: Iterable[BatchView], statuses: Iterable[str] = (), text: str | None = None) -> list[BatchView]:
    """The views that match, in their order."""
    return list(filter(matcher(statuses, text), views))
