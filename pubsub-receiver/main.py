"""pubsub-receiver: Pub/Sub push endpoint.

POST /pubsub/push?token=<PUBSUB_VERIFICATION_TOKEN> with a wrapped push envelope (JSON), or an
unwrapped push (pushConfig.noWrapper: the body is the data; recognised by its x-goog-pubsub-*
metadata headers, or by `&unwrapped=1` in the endpoint URL when writeMetadata is off).
Logs `Received message: <payload> (id=..., ...)` and answers 204 (ack).

With PUBSUB_OIDC_AUDIENCE set, the push must also carry `Authorization: Bearer <ID token>`
(pushConfig.oidcToken), verified by pubsub_shared.oidc: 401 when missing, 403 when invalid,
503 when the signing certificates cannot be fetched.
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
    def post(self):
        # Query parameters only (request.GET): never parse the body as a form.
        if not auth.check_request_token(self.request.GET.get('token')):
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
        try:
            message = envelope.parse_push(self.request.body, self.request.headers,
                                          self.request.GET)
        except envelope.MalformedPush as e:
            logging.warning('Rejected malformed push: %s', e)
            return _text(self.response, 400, 'Bad request: %s.' % e)
        logging.info(message.log_line())
        self.response.status_int = 204
        if 'Content-Type' in self.response.headers:  # a 204 carries no body
            del self.response.headers['Content-Type']


app = webapp2.WSGIApplication([
    webapp2.Route('/', HealthHandler),
    webapp2.Route('/pubsub/push', PushHandler),
], debug=False)
