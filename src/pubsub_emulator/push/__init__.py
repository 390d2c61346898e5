"""Native push: subscriptions with `pushConfig.pushEndpoint` get their messages POSTed.

dispatcher  follows push configs, one SubscriptionPusher per push subscription, /debug/push
pusher      one subscription's delivery loop, POSTs, slow start and backoff
request     the body and headers of a POST (push_contract's envelope, written faster)
client      the HTTP/1.1 keep-alive client of the POSTs, a connection pool per subscription
settle      acks and nacks written to the store in batches
ownership   which process pushes a subscription (one at a time), and the state handed over
oidc        the emulator's OIDC signing key, tokens and certificate endpoints
destinations where push may go (--push-allow), checked at each connection
"""

from .destinations import Destinations, PushRefused, parse_push_allow
from .dispatcher import PushDispatcher
from .oidc import SigningRefused, TokenIssuer
from .pusher import MAX_WINDOW

__all__ = ["MAX_WINDOW", "Destinations", "PushDispatcher", "PushRefused", "SigningRefused",
           "TokenIssuer", "parse_push_allow"]
