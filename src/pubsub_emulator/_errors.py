"""One error catalogue for every protocol: each status knows its gRPC code and its HTTP status.

Messages follow Cloud Pub/Sub's wording, so code written against Google's service (and the
people reading its logs) see what they would see there.
"""

from __future__ import annotations

import enum

import grpc


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

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def rest_body(self) -> dict[str, object]:
        """Google's JSON error body."""
        return {"error": {"code": self.status.http_status, "message": self.message,
                          "status": self.status.name}}


def invalid_argument(message: str) -> ApiError:
    return ApiError(Status.INVALID_ARGUMENT, message)


def failed_precondition(message: str) -> ApiError:
    return ApiError(Status.FAILED_PRECONDITION, message)


def not_found(resource_id: str) -> ApiError:
    return ApiError(Status.NOT_FOUND, f"Resource not found (resource={resource_id}).")


def already_exists(resource_id: str) -> ApiError:
    return ApiError(Status.ALREADY_EXISTS,
                    f"Resource already exists in the project (resource={resource_id}).")


def invalid_name(kind: str, name: str) -> ApiError:
    return invalid_argument(f"Invalid [{kind}] name: (name={name})")


def unimplemented(what: str) -> ApiError:
    return ApiError(Status.UNIMPLEMENTED, f"{what} is not implemented by this emulator.")
