"""pubsub-sender: `POST /` publishes the request body, byte for byte, to a Pub/Sub topic.

Env: PUBSUB_PROJECT, PUBSUB_TOPIC; PUBSUB_EMULATOR_HOST (emulator, plain HTTP) or
GOOGLE_APPLICATION_CREDENTIALS (real Cloud Pub/Sub, or with PUBSUB_API_ROOT an emulator with TLS
and --auth; PUBSUB_CA_CERTS its CA). Optional message attributes come from query parameters
`attr.<key>=<value>`.
"""
import json
import logging
import os

import webapp2

from pubsub_shared import MAX_MESSAGE_BYTES
from pubsub_shared import client as pubsub_client

ATTR_PREFIX = 'attr.'


def _text(response, status, message):
    response.status_int = status
    response.content_type = 'text/plain'
    response.charset = 'utf-8'
    response.write(message + '\n')


class PublishHandler(webapp2.RequestHandler):
    def get(self):
        _text(self.response, 200, 'pubsub-sender: POST a body to / to publish it.')

    def post(self):
        # Reject oversize bodies before reading them when the length is announced.
        try:
            announced = int(self.request.headers.get('Content-Length') or 0)
        except ValueError:
            announced = 0
        if announced > MAX_MESSAGE_BYTES:
            return self._too_large(announced)
        # request.body, never request.get(): a form-encoded body (curl --data) must not be
        # parsed, it is the message.
        data = self.request.body
        if len(data) > MAX_MESSAGE_BYTES:
            return self._too_large(len(data))
        if not data:
            logging.warning('Rejected publish: empty body.')
            return _text(self.response, 400, 'Empty body: nothing to publish.')

        attributes = {}
        for key, value in self.request.GET.items():
            if key.startswith(ATTR_PREFIX) and len(key) > len(ATTR_PREFIX):
                attributes[key[len(ATTR_PREFIX):]] = value

        project = os.environ.get('PUBSUB_PROJECT')
        topic = os.environ.get('PUBSUB_TOPIC')
        if not project or not topic:
            logging.error('PUBSUB_PROJECT and PUBSUB_TOPIC must both be set (app.yaml '
                          'env_variables or --env_var).')
            return _text(self.response, 500, 'Server misconfigured: no topic configured.')
        try:
            message_id = pubsub_client.timed_publish(project, topic, data, attributes)
        except pubsub_client.ConfigError as e:
            logging.error('Publish failed, configuration error: %s', e)
            return _text(self.response, 500, 'Server misconfigured: see the application log.')
        except pubsub_client.PublishError as e:
            if e.status == 413:
                logging.warning('Rejected publish: %s', e)
                return _text(self.response, 413, 'Body too large: %s.' % e)
            logging.error('Publish failed: %s', e)
            reason = ('Pub/Sub is unavailable' if e.status == 503
                      else 'Pub/Sub rejected the publish')
            if e.status == 503:
                self.response.headers['Retry-After'] = '10'
            return _text(self.response, e.status, reason + '; see the application log.')
        logging.info('Published message %s (%d bytes) to projects/%s/topics/%s.',
                     message_id, len(data), project, topic)
        self.response.status_int = 200
        self.response.content_type = 'application/json'
        self.response.write(json.dumps({'messageId': message_id}))

    def _too_large(self, size):
        logging.warning('Rejected publish: body of %d bytes exceeds the %d-byte limit.',
                        size, MAX_MESSAGE_BYTES)
        _text(self.response, 413,
              'Body too large: %d bytes, limit %d bytes.' % (size, MAX_MESSAGE_BYTES))


app = webapp2.WSGIApplication([
    webapp2.Route('/', PublishHandler),
], debug=False)
