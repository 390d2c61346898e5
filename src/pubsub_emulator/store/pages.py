"""Page tokens of list calls: one opaque encoding for every store."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from .base import InvalidPageToken, Page, Resource


def encode_page_token(name: str) -> str:
    """The opaque page token of list calls: the last name of the page, encoded."""
    return base64.urlsafe_b64encode(name.encode()).decode()


def decode_page_token(token: str) -> str:
    """The name a page token stands for; "" for no token; InvalidPageToken for one we did not
    issue."""
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidPageToken("invalid page token") from exc


def page_of(rows: Iterable[tuple[str, bytes]], page_size: int) -> Page:
    """A page from up to page_size + 1 rows in name order (the extra one says there is more)."""
    items = [Resource(name, data) for name, data in rows]
    if page_size and len(items) > page_size:
        items = items[:page_size]
        return Page(items, encode_page_token(items[-1].name))
    return Page(items, "")
