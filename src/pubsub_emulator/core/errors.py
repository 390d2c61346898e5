"""The error catalogue: every error the API returns, protocol-free.

Each error carries a google.rpc.Code (`Status`) and a message in Cloud Pub/Sub's wording, so
code written against Google's service (and the people reading its logs) see what they would
see there. How a status travels on each protocol (gRPC code, HTTP status, JSON body) is the
adapters' business: api/errors.py.
"""

from __future__ import annotations

import enum

from google.protobuf.message import Message
from google.rpc import error_details_pb2


class Status(enum.Enum):
    """The google.rpc.Code of an error (the value is the code's number)."""

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class ApiError(Exception):
    """An error the API returns to its caller, as Cloud Pub/Sub would."""

    def __init__(self, status: Status, message: str, details: list[Message] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []  # google.rpc detail messages, e.g. ErrorInfo


def invalid_argument(message: str) -> ApiError:
    return ApiError(Status.INVALID_ARGUMENT, message)


def failed_precondition(message: str) -> ApiError:
    return ApiError(Status.FAILED_PRECONDITION, message)


def not_found(resource_id: str) -> ApiError:
    return ApiError(Status.NOT_FOUND, f"Resource not found (resource={resource_id}).")


def already_exists(resource_id: str) -> ApiError:
    return ApiError(Status.ALREADY_EXISTS,
                    f"Resource already exists in the project (resource={resource_id}).")


def aborted(message: str) -> ApiError:
    return ApiError(Status.ABORTED, message)


def invalid_name(kind: str, name: str) -> ApiError:
    return invalid_argument(f"Invalid [{kind}] name: (name={name})")


def unimplemented(what: str) -> ApiError:
    return ApiError(Status.UNIMPLEMENTED, f"{what} is not implemented by this emulator.")


EOD_FAILURE_MESSAGE = ("Some acknowledgement ids in the request were invalid. This could be "
                       "because the acknowledgement ids have expired or the acknowledgement ids "
                       "were malformed.")


def exactly_once_failure(invalid_ack_ids: list[str]) -> ApiError:
    """Exactly-once delivery: INVALID_ARGUMENT with an ErrorInfo naming each failed ack id."""
    info = error_details_pb2.ErrorInfo(
        reason="EXACTLY_ONCE_ACKID_FAILURE", domain="pubsub.googleapis.com",
        metadata={ack_id: "PERMANENT_FAILURE_INVALID_ACK_ID" for ack_id in invalid_ack_ids})
    return ApiError(Status.INVALID_ARGUMENT, EOD_FAILURE_MESSAGE, [info])
