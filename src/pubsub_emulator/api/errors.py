"""How the error catalogue travels on each protocol: gRPC status codes, HTTP statuses, Google's
JSON error body and the google.rpc.Status trailer. The one place statuses map to the wire."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2

from ..core.errors import ApiError, Status

# HTTP statuses as Google's JSON mapping gives them (google/rpc/code.proto).
HTTP_STATUS: dict[Status, int] = {
    Status.CANCELLED: 499,
    Status.INVALID_ARGUMENT: 400,
    Status.DEADLINE_EXCEEDED: 504,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 409,
    Status.PERMISSION_DENIED: 403,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.FAILED_PRECONDITION: 400,
    Status.ABORTED: 409,
    Status.OUT_OF_RANGE: 400,
    Status.UNIMPLEMENTED: 501,
    Status.INTERNAL: 500,
    Status.UNAVAILABLE: 503,
    Status.UNAUTHENTICATED: 401,
}
GRPC_CODE: dict[Status, grpc.StatusCode] = {status: grpc.StatusCode[status.name]
                                            for status in Status}
_FROM_GRPC = {code: status for status, code in GRPC_CODE.items()}


# HTTP statuses the HTTP layer itself answers (unknown route, method, size, framing) that
# have no entry above: Google's front end answers an over-size request with INVALID_ARGUMENT
# ("Request payload size exceeds the limit"), and other client faults with INVALID_ARGUMENT.
_FROM_HTTP = {code: status for status, code in HTTP_STATUS.items()
              if status not in (Status.FAILED_PRECONDITION, Status.OUT_OF_RANGE, Status.ABORTED)}
_FROM_HTTP[413] = Status.INVALID_ARGUMENT

# Google's message for an error that is the server's fault; the details go to the log only.
INTERNAL_MESSAGE = "Internal error encountered."


def status_from_grpc(code: grpc.StatusCode) -> Status:
    """The status of a gRPC code (INTERNAL for codes the catalogue does not use)."""
    return _FROM_GRPC.get(code, Status.INTERNAL)


def status_from_http(code: int) -> Status:
    """The status of an HTTP error status (other 4xx: INVALID_ARGUMENT; other 5xx: INTERNAL)."""
    if code in _FROM_HTTP:
        return _FROM_HTTP[code]
    return Status.INVALID_ARGUMENT if code < 500 else Status.INTERNAL


def internal_error() -> ApiError:
    return ApiError(Status.INTERNAL, INTERNAL_MESSAGE)


def rpc_status(exc: ApiError) -> status_pb2.Status:
    """The google.rpc.Status gRPC carries in its grpc-status-details-bin trailer."""
    status = status_pb2.Status(code=exc.status.value, message=exc.message)
    for detail in exc.details:
        status.details.add().Pack(detail)
    return status


def rest_body(exc: ApiError) -> dict[str, object]:
    """Google's JSON error body."""
    error: dict[str, object] = {"code": HTTP_STATUS[exc.status], "message": exc.message,
                                "status": exc.status.name}
    if exc.details:
        error["details"] = [
            {"@type": f"type.googleapis.com/{d.DESCRIPTOR.full_name}",
             **json_format.MessageToDict(d)} for d in exc.details]
    return {"error": error}
