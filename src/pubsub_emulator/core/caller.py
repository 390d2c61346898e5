"""Who is calling: the identity the adapters authenticated, for the core's checks.

The adapters (gRPC, REST) authenticate a call under `--auth` and set `current` for the time
the core serves it; without `--auth` it stays None (anyone may do anything, as on any
emulator). The core reads it where Google's behaviour depends on the caller (for example
which service accounts a push subscription's OIDC token may name).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    email: str  # the service account the credentials belong to
    admin: bool = False  # may administer the emulator (keys, /debug, any OIDC account)


current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)
