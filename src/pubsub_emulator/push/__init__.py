"""Native push: subscriptions with `pushConfig.pushEndpoint` get their messages POSTed.

dispatcher  follows push configs, one SubscriptionPusher per push subscription, /debug/push
pusher      one subscription's delivery loop, POSTs, slow start and backoff
oidc        the emulator's OIDC signing key, tokens and certificate endpoints
"""

from .dispatcher import PushDispatcher
from .oidc import TokenIssuer

__all__ = ["PushDispatcher", "TokenIssuer"]
