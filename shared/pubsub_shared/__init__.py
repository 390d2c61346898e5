"""Code shared by the pubsub-sender and pubsub-receiver App Engine (python27) apps.

Python 2.7 compatible (also imports under Python 3). `make vendor` copies this package into
each app's lib/ so every app directory deploys on its own.
"""

MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # Cloud Pub/Sub's per-message data limit (10 MB)
