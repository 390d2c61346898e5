"""One error catalogue for every protocol: each status knows its gRPC code and its HTTP status.

Messages follow Cloud Pub/Sub's wording, so code written against Google's service (and the
people reading its logs) see what they would see there.
"""

from __future__ import annotations

import enum

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2


class Status(enum.Enum):
    """google.rpc.Code values with the HTTP status Google's JSON mapping gives them."""

    INVALID_ARGUMENT = (grpc.StatusCode.INVALID_ARGUMENT, 400)
    FAILED_PRECONDITION = (grpc.StatusCode.FAILED_PRECONDITION, 400)
    OUT_OF_RANGE = (grpc.StatusCode.OUT_OF_RANGE, 400)
    UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, 401)
    PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, 403)
    NOT_FOUND = (grpc.StatusCode.NOT_FOUND, 404)
    ALREADY_EXISTS = (grpc.StatusCode.ALREADY_EXISTS, 409)
    ABORTED = (grpc.StatusCode.ABORTED, 409)
    RESOURCE_EXHAUSTED = (grpc.StatusCode.RESOURCE_EXHAUSTED, 429)
    CANCELLED = (grpc.StatusCode.CANCELLED, 499)
    INTERNAL = (grpc.StatusCode.INTERNAL, 500)
    UNIMPLEMENTED = (grpc.StatusCode.UNIMPLEMENTED, 501)
    UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, 503)
    DEADLINE_EXCEEDED = (grpc.StatusCode.DEADLINE_EXCEEDED, 504)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]

    @classmethod
    def from_grpc(cls, code: grpc.StatusCode) -> Status:
        for status in cls:
            if status.grpc_code == code:
                return status
        return cls.INTERNAL


class ApiError(Exception):
    """An error the API returns to its caller, as Cloud Pub/Sub would."""

    def __init__(self, status: Status, message: str, details: list[Message] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []  # google.rpc detail messages, e.g. ErrorInfo

    def rpc_status(self) -> status_pb2.Status:
        """The google.rpc.Status gRPC carries in its grpc-status-details-bin trailer."""
        status = status_pb2.Status(code=self.status.grpc_code.value[0], message=self.message)
        for detail in self.details:
            status.details.add().Pack(detail)
        return status

    def rest_body(self) -> dict[str, object]:
        """Google's JSON error body."""
        error: dict[str, object] = {"code": self.status.http_status, "message": self.message,
                                    "status": self.status.name}
        if self.details:
            error["details"] = [
                {"@type": f"type.googleapis.com/{d.DESCRIPTOR.full_name}",
                 **json_format.MessageToDict(d)} for d in self.details]
        return {"error": error}


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
