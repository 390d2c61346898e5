// Google's Node client (@google-cloud/pubsub), unchanged, making the calls of the IAM table
// (tests/test_iam_clients.py) against the emulator with TLS and --auth, as one member.
//
//   node iam_table.js calls.json
//
// calls.json: {"endpoint": "127.0.0.1:8085", "keyFile": "key.json", "transport": "grpc" or
// "rest" (`fallback: true`), "concurrency": 8, "results": "results.json",
// "calls": [{"id": "0", "client": "publisher" | "subscriber" | "schema",
// "method": "createTopic", "type": "google.pubsub.v1.Topic",
// "request": "<base64 of the serialized protobuf>"}, ...]}.
//
// Each request is decoded with the protos the client ships (google.pubsub.v1 from
// @google-cloud/pubsub, google.iam.v1 from google-gax's IamProtos) and passed to the method of
// v1.PublisherClient / v1.SubscriberClient / v1.SchemaServiceClient (getIamPolicy,
// setIamPolicy and testIamPermissions are those clients' too), with retries off. A
// "streamingPull" call opens the duplex stream, writes the request and waits for the first
// response (which must hold a message) or the error, then cancels the stream.
//
// Writes {"<id>": {"ok": true} or {"ok": false, "code", "statusCode", "message"}, ...} to
// the results file (stdout to a pipe is written asynchronously: a large answer would be cut
// by the exit). The CA and the rest of the environment are as for client.js
// (test_node_client.py).
'use strict';

const fs = require('fs');
const {withTimeout, describe} = require('./common');
const {PubSub, v1, protos} = require('@google-cloud/pubsub');
const {IamProtos} = require('google-gax');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const CALL_TIMEOUT = 20000;
const NO_RETRY = {retry: null, timeout: CALL_TIMEOUT}; // one attempt: a refusal is the answer

function messageType(fullName) {
  const root = fullName.startsWith('google.iam.') ? IamProtos : protos;
  const type = fullName.split('.').reduce((node, part) => node && node[part], root);
  if (!type || typeof type.decode !== 'function') {
    throw new Error(`the client ships no message type ${fullName}`);
  }
  return type;
}

// The first response of a streaming pull: resolved if it holds a message, rejected on error.
function streamOnce(subscriber, request) {
  return new Promise((resolve, reject) => {
    const stream = subscriber.streamingPull({timeout: CALL_TIMEOUT});
    let settled = false;
    const settle = (done, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stream.cancel();
      stream.end();
      done(value);
    };
    const timer = setTimeout(
      () => settle(reject, new Error(`no response in ${CALL_TIMEOUT} ms`)),
      CALL_TIMEOUT
    );
    stream.on('data', response => {
      if (response.receivedMessages && response.receivedMessages.length) {
        settle(resolve);
      } else {
        settle(reject, new Error('the first response held no message'));
      }
    });
    stream.on('error', err => settle(reject, err)); // (after a settle: the cancellation)
    stream.write(request);
  });
}

async function attempt(clients, call) {
  try {
    const request = messageType(call.type).decode(Buffer.from(call.request, 'base64'));
    const client = clients[call.client];
    const what = `${call.client}.${call.method}`;
    if (call.method === 'streamingPull') {
      await streamOnce(client, request);
    } else {
      await withTimeout(client[call.method](request, NO_RETRY), CALL_TIMEOUT + 5000, what);
    }
    return {ok: true};
  } catch (err) {
    return {ok: false, ...describe(err)};
  }
}

async function main() {
  const pubsub = new PubSub({
    projectId: 'iam-table',
    apiEndpoint: cfg.endpoint,
    emulatorMode: false, // TLS and credentials on a non-googleapis.com endpoint
    keyFilename: cfg.keyFile,
    ...(cfg.transport === 'rest' ? {fallback: true} : {}),
  });
  const config = await pubsub.getClientConfig();
  const clients = {
    publisher: new v1.PublisherClient(config),
    subscriber: new v1.SubscriberClient(config),
    schema: new v1.SchemaServiceClient(config),
  };
  const results = {};
  let next = 0;
  const worker = async () => {
    while (next < cfg.calls.length) {
      const call = cfg.calls[next++];
      results[call.id] = await attempt(clients, call);
    }
  };
  await Promise.all(Array.from({length: cfg.concurrency}, worker));
  fs.writeFileSync(cfg.results, JSON.stringify(results));
}

main().then(
  () => process.exit(0), // streams and channels of the clients must not keep us alive
  err => {
    process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  }
);
