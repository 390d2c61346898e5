# -*- coding: utf-8 -*-
"""Helpers for the python27 app tests: app loading, real loopback HTTP servers, free ports."""
import BaseHTTPServer
import os
import socket
import SocketServer
import ssl
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_app(name):
    """Import <ROOT>/<name>/main.py (after its appengine_config) and return the module.

    One app per process: both apps have a module called `main`.
    """
    app_dir = os.path.join(ROOT, name)
    if not os.path.isdir(os.path.join(app_dir, 'lib')):
        raise RuntimeError('%s/lib is missing: run `make vendor`' % name)
    loaded = sys.modules.get('main')
    if loaded is not None:
        if os.path.dirname(os.path.abspath(loaded.__file__)) != app_dir:
            raise RuntimeError('main.py of another app is already imported: run each app\'s '
                               'tests in its own process (scripts/test-apps)')
        return loaded
    sys.path.insert(0, app_dir)
    import appengine_config  # noqa: F401  (adds lib/ to sys.path)
    import main
    return main


class RecordingServer(object):
    """A real HTTP server on 127.0.0.1:<free port> in a thread. Records each request
    (method, path, headers, body) and answers with `status`/`body`/`content_type` (plus
    `headers`; all read per request, so a test may change them between requests); with
    `hang=True` it accepts the request and never answers (until stopped).

    `respond(request) -> (status, body)` (optional) answers instead, given the recorded request.
    With `tls=(certfile, keyfile)` it speaks https (`url` says which)."""

    def __init__(self, status=200, body=b'{"messageIds": ["4242"]}',
                 content_type='application/json', hang=False, headers=None, respond=None,
                 tls=None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.hang = hang
        self.respond = respond
        self.requests = []
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPServer.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def _handle(self):
                length = int(self.headers.get('Content-Length') or 0)
                data = self.rfile.read(length) if length else b''
                request = {'method': self.command, 'path': self.path,
                           'headers': dict(self.headers.items()), 'body': data}
                outer.requests.append(request)
                if outer.hang:
                    outer._stop.wait(30)
                    return
                status, body = outer.status, outer.body
                if outer.respond is not None:
                    status, body = outer.respond(request)
                self.send_response(status)
                self.send_header('Content-Type', outer.content_type)
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, *args):
                pass

        class Server(SocketServer.ThreadingMixIn, BaseHTTPServer.HTTPServer):
            daemon_threads = True  # keep-alive handler threads must not block shutdown

        self.server = Server(('127.0.0.1', 0), Handler)
        self.port = self.server.server_address[1]
        self.host = '127.0.0.1:%d' % self.port
        self.scheme = 'http'
        if tls:
            # The handshake runs in accept(); a client that refuses the certificate makes
            # accept() raise ssl.SSLError, a socket.error, which serve_forever() ignores.
            context = ssl.SSLContext(ssl.PROTOCOL_SSLv23)
            context.load_cert_chain(tls[0], tls[1])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = 'https'
        self.url = '%s://%s/' % (self.scheme, self.host)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={'poll_interval': 0.05})
        self.thread.daemon = True

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class ClosedPort(object):
    """A loopback port that refuses connections: bound but never listening."""

    def __enter__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(('127.0.0.1', 0))
        self.port = self.sock.getsockname()[1]
        self.host = '127.0.0.1:%d' % self.port
        return self

    def __exit__(self, *exc):
        self.sock.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
