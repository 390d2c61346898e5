"""The protocol adapters: gRPC and REST over the one service core, and the one-port front.

protos       the API surface (methods, message types, google.api.http rules) from Google's protos
grpc_server  gRPC: Google's method paths and messages onto the core
rest         REST: Google's JSON mapping, routes compiled from the google.api.http rules
front        one port for both: HTTP/1.1 to REST in-process, HTTP/2 spliced to gRPC
errors       the error catalogue on each protocol (gRPC codes, HTTP statuses, JSON bodies)
upstream     a gRPC client of any Pub/Sub endpoint, for the REST-only gateway
"""
