"""Cloud Pub/Sub's documented limits and defaults (https://cloud.google.com/pubsub/quotas)."""

MAX_REQUEST_BYTES = 10 * 1000 * 1000  # publish request and message size: 10 MB
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
MAX_MESSAGES_PER_PUBLISH = 1000
MAX_FILTER_BYTES = 256

DEFAULT_ACK_DEADLINE_S = 10
MIN_ACK_DEADLINE_S = 10
MAX_ACK_DEADLINE_S = 600
MAX_MODIFY_DEADLINE_S = 600

DEFAULT_SUBSCRIPTION_RETENTION_S = 7 * 24 * 3600
MIN_RETENTION_S = 10 * 60
MAX_SUBSCRIPTION_RETENTION_S = 31 * 24 * 3600
MAX_TOPIC_RETENTION_S = 31 * 24 * 3600
DEFAULT_EXPIRATION_TTL_S = 31 * 24 * 3600
MIN_EXPIRATION_TTL_S = 24 * 3600

MIN_DELIVERY_ATTEMPTS = 5
MAX_DELIVERY_ATTEMPTS = 100
DEFAULT_DELIVERY_ATTEMPTS = 5
MAX_RETRY_BACKOFF_S = 600
DEFAULT_MIN_RETRY_BACKOFF_S = 10
DEFAULT_MAX_RETRY_BACKOFF_S = 600

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
SNAPSHOT_LIFETIME_S = 7 * 24 * 3600

# How long a Pull with no message available waits for one before returning empty.
PULL_WAIT_S = 5.0
# Most messages one StreamingPull response carries.
MAX_MESSAGES_PER_STREAM_RESPONSE = 1000
# Most message bytes one StreamingPull response carries (one larger message goes alone): under
# 4 MiB, gRPC's default receive limit, which Google's clients keep when PUBSUB_EMULATOR_HOST
# is set, and far under the server's send limit, whatever the client's flow control allows.
MAX_BYTES_PER_STREAM_RESPONSE = 3 * 1024 * 1024
# A read-modify-write of a resource (update_*, schema commits) is tried this many times when
# other requests change the resource between its read and its write; then ABORTED, the code
# Google answers such conflicts with.
REWRITE_ATTEMPTS = 10
