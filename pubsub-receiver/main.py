"""pubsub-receiver: Pub/Sub push endpoint.

POST /pubsub/push?token=<PUBSUB_VERIFICATION_TOKEN> with a wrapped push envelope (JSON), or an
unwrapped push (pushConfig.noWrapper: the body is the data; recognised by its x-goog-pubsub-*
metadata headers, or by `&unwrapped=1` in the endpoint URL when writeMetadata is off).
Logs `Received message: <payload> (id=..., ...)` and answers 204 (ack).

With PUBSUB_OIDC_AUDIENCE set, the push must also carry `Authorization: Bearer <ID token>`
(pushConfig.oidcToken), verified by pubsub_shared.oidc: 401 when missing, 403 when invalid,
503 when the signing certificates cannot be fetched.

Bad input never makes a 500: a path, query string, metadata header or body that cannot be
decoded, or a body that is not a JSON object (however deep), gets 400 with a one-line reason
and one warning in the log; a body over envelope.MAX_PUSH_BODY_BYTES gets 413; a repeated
`token` parameter gets 403.
"""
import logging

import webapp2

from pubsub_shared import auth, envelope, oidc


def _text(response, status, message):
    response.status_int = status
    response.content_type = 'text/plain'
    response.charset = 'utf-8'
    response.write(message + '\n')


class HealthHandler(webapp2.RequestHandler):
    def get(self):
        _text(self.response, 200, 'pubsub-receiver: push endpoint at POST /pubsub/push?token=...')


class PushHandler(webapp2.RequestHandler):
    def _bad_request(self, reason):
        logging.warning('Rejected malformed push from %s: %s.', self.request.remote_addr, reason)
        return _text(self.response, 400, 'Bad request: %s.' % reason)

    def post(self):
        # Query parameters only (request.GET): never parse the body as a form. webob decodes
        # the query string as UTF-8 when request.GET is first read, so that is where odd bytes
        # (?token=%ff) surface; read it once, here, and refuse them as a client error.
        try:
            query = self.request.GET
        except UnicodeDecodeError:
            return self._bad_request('query string is not valid UTF-8')
        tokens = query.getall('token')
        if len(tokens) > 1:
            # Which of several tokens counts depends on the parser (webob takes the last,
            # others the first): refuse ambiguous credentials rather than pick one.
            logging.warning('Rejected push from %s: the token parameter is given %d times.',
                            self.request.remote_addr, len(tokens))
            return _text(self.response, 403, 'Forbidden: more than one token.')
        if not auth.check_request_token(tokens[0] if tokens else None):
            logging.warning('Rejected push from %s: missing or wrong verification token.',
                            self.request.remote_addr)
            return _text(self.response, 403, 'Forbidden: missing or wrong token.')
        oidc_config = oidc.config_from_env()
        if oidc_config is not None:
            try:
                oidc.check_request(self.request.headers.get('Authorization'), oidc_config)
            except oidc.InvalidToken as e:
                logging.warning('Rejected push from %s: OIDC token check failed: %s.',
                                self.request.remote_addr, e)
                if e.missing:
                    self.response.headers['WWW-Authenticate'] = 'Bearer'
                    return _text(self.response, 401, 'Unauthorized: missing bearer token.')
                return _text(self.response, 403, 'Forbidden: invalid OIDC token.')
            except oidc.CertsUnavailable as e:
                logging.error('Rejected push from %s: OIDC certificates unavailable: %s.',
                              self.request.remote_addr, e)
                self.response.headers['Retry-After'] = '10'
                return _text(self.response, 503, 'Service unavailable: cannot verify token.')
        # Refuse an oversized body before reading it (webob reads it into memory whole);
        # the length is checked again after reading, for a request without Content-Length.
        limit = envelope.MAX_PUSH_BODY_BYTES
        body = None
        if (self.request.content_length or 0) <= limit:
            body = self.request.body
        if body is None or len(body) > limit:
            logging.warning('Rejected push from %s: body of %s bytes is over the %d-byte limit.',
                            self.request.remote_addr,
                            self.request.content_length or len(body), limit)
            return _text(self.response, 413, 'Request entity too large: over %d bytes.' % limit)
        try:
            message = envelope.parse_push(body, self.request.headers, query)
        except envelope.MalformedPush as e:
            return self._bad_request(e)
        logging.info(message.log_line())
        self.response.status_int = 204
        if 'Content-Type' in self.response.headers:  # a 204 carries no body
            del self.response.headers['Content-Type']


class ReceiverApplication(webapp2.WSGIApplication):
    """webapp2 routing reads request.path, which webob decodes from PATH_INFO as UTF-8 before
    any handler runs: a path that is not UTF-8 (/pubsub/push%ff) would raise there and become a
    500 with a traceback. Refuse it first, as the client error it is."""

    def __call__(self, environ, start_response):
        for key in ('SCRIPT_NAME', 'PATH_INFO'):
            value = environ.get(key) or ''
            try:
                if isinstance(value, bytes):  # Python 2's native WSGI strings
                    value.decode('utf-8')
            except UnicodeDecodeError:
                logging.warning('Rejected request from %s: the URL path is not valid UTF-8.',
                                environ.get('REMOTE_ADDR'))
                response = webapp2.Response()
                _text(response, 400, 'Bad request: URL path is not valid UTF-8.')
                return response(environ, start_response)
        return super(ReceiverApplication, self).__call__(environ, start_response)


app = ReceiverApplication([
    webapp2.Route('/', HealthHandler),
    webapp2.Route('/pubsub/push', PushHandler),
], debug=False)
