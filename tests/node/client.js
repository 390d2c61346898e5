// Google's Node client (@google-cloud/pubsub), unchanged, against the emulator with TLS and
// --auth; run by tests/test_node_client.py, which checks the JSON this prints on stdout.
//
//   node client.js '{"endpoint": "127.0.0.1:8085", "project": "p", "keyFile": "key.json",
//                    "suffix": "abc", "checks": ["grpc", "rest", "anonymous"]}'
//
// checks: "grpc" (the default transport: create a topic and a subscription, publish a message
// with an attribute, receive it by streaming pull, ack it; then a nack of its ack id and a
// Pull find nothing), "rest" (the same with `fallback: true`, received by a unary Pull
// through v1.SubscriberClient), "anonymous" (three calls over each transport with no
// credentials at all: the server must answer UNAUTHENTICATED), "handshake" (the same calls
// with the key file, run without the CA: the TLS handshake must fail).
//
// The CA comes from the environment, read at start: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH for gRPC
// (grpc-js ignores NODE_EXTRA_CA_CERTS), NODE_EXTRA_CA_CERTS for REST. `emulatorMode: false`
// keeps TLS and credentials on a non-googleapis.com endpoint (without it the client goes
// plaintext and anonymous). PUBSUB_EMULATOR_HOST must not be set.
'use strict';

const fs = require('fs');
const {withTimeout, describe} = require('./common');
const path = require('path');
const {PubSub, v1} = require('@google-cloud/pubsub');
const {PassThroughClient} = require('google-auth-library');

const cfg = JSON.parse(process.argv[2]);
const NO_RETRY = {retry: null, timeout: 15000}; // one attempt: a refusal is the answer

function pubsubFor(transport, auth) {
  return new PubSub({
    projectId: cfg.project,
    apiEndpoint: cfg.endpoint,
    emulatorMode: false,
    ...(transport === 'rest' ? {fallback: true} : {}),
    ...auth,
  });
}

// One message through a topic and a subscription; what came back and what remained.
async function roundTrip(transport) {
  const pubsub = pubsubFor(transport, {keyFilename: cfg.keyFile});
  const topicId = `node-${transport}-${cfg.suffix}`;
  const data = `hello over ${transport}`;
  const [topic] = await pubsub.createTopic(topicId);
  const [subscription] = await topic.createSubscription(topicId, {ackDeadlineSeconds: 30});
  const messageId = await topic.publishMessage({
    data: Buffer.from(data),
    attributes: {via: transport},
  });
  const config = await pubsub.getClientConfig();
  const subscriber = new v1.SubscriberClient(config);
  let received;
  if (transport === 'grpc') {
    // streaming pull, as applications receive
    received = await withTimeout(
      new Promise((resolve, reject) => {
        subscription.on('error', reject);
        subscription.on('message', message => {
          message.ack();
          resolve({
            ackId: message.ackId,
            id: message.id,
            data: message.data.toString(),
            attributes: message.attributes,
          });
        });
      }),
      20000,
      'the message by streaming pull'
    );
    await subscription.close(); // flushes the ack
  } else {
    // no streaming over REST: a unary Pull and Acknowledge through the generated client
    const [response] = await subscriber.pull({
      subscription: subscription.name,
      maxMessages: 1,
    });
    const got = response.receivedMessages[0];
    await subscriber.acknowledge({
      subscription: subscription.name,
      ackIds: [got.ackId],
    });
    received = {
      ackId: got.ackId,
      id: got.message.messageId,
      data: Buffer.from(got.message.data).toString(),
      attributes: got.message.attributes,
    };
  }
  // Acked: a nack of the same ack id (which would make an unacked message deliverable at
  // once) changes nothing, there is nothing left to pull.
  await subscriber.modifyAckDeadline({
    subscription: subscription.name,
    ackIds: [received.ackId],
    ackDeadlineSeconds: 0,
  });
  delete received.ackId;
  const [after] = await subscriber.pull({
    subscription: subscription.name,
    maxMessages: 10,
    returnImmediately: true,
  });
  await subscription.delete();
  await topic.delete();
  await subscriber.close();
  await pubsub.close();
  return {
    topic: topic.name,
    subscription: subscription.name,
    published: {id: messageId, data, attributes: {via: transport}},
    received,
    left: after.receivedMessages.length,
  };
}

// Each call over each transport; the error each one failed with (null if it succeeded).
async function refusals(auth) {
  const result = {};
  for (const transport of ['grpc', 'rest']) {
    const pubsub = pubsubFor(transport, auth);
    const calls = {
      createTopic: () => pubsub.createTopic(`node-refused-${transport}-${cfg.suffix}`, NO_RETRY),
      getTopics: () => pubsub.getTopics({gaxOpts: NO_RETRY, autoPaginate: false}),
      publish: () =>
        pubsub
          .topic(`node-refused-${transport}-${cfg.suffix}`, {gaxOpts: NO_RETRY})
          .publishMessage({data: Buffer.from('x')}),
    };
    result[transport] = {};
    for (const [name, call] of Object.entries(calls)) {
      try {
        await withTimeout(call(), 30000, `${transport} ${name}`);
        result[transport][name] = null;
      } catch (err) {
        result[transport][name] = describe(err);
      }
    }
    await pubsub.close();
  }
  return result;
}

async function main() {
  // The versions at work (google-gax's own google-auth-library signs the JWTs), read from
  // each package's package.json beside its resolved entry point ("exports" may hide it).
  const gax = require.resolve('google-gax');
  const version = (pkg, paths) => {
    const main = require.resolve(pkg, paths && {paths});
    const root = main.slice(0, main.lastIndexOf(`node_modules/${pkg}/`)) + `node_modules/${pkg}`;
    return JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  };
  const out = {
    versions: {
      '@google-cloud/pubsub': version('@google-cloud/pubsub'),
      'google-gax': version('google-gax'),
      'google-auth-library (google-gax)': version('google-auth-library', [gax]),
      '@grpc/grpc-js': version('@grpc/grpc-js', [gax]),
      gaxios: version('gaxios', [gax]),
    },
  };
  for (const check of cfg.checks) {
    try {
      if (check === 'grpc' || check === 'rest') {
        out[check] = await roundTrip(check);
      } else if (check === 'anonymous') {
        out[check] = await refusals({authClient: new PassThroughClient()});
      } else if (check === 'handshake') {
        out[check] = await refusals({keyFilename: cfg.keyFile});
      } else {
        throw new Error(`unknown check ${check}`);
      }
    } catch (err) {
      out[check] = {error: describe(err), stack: String(err.stack).slice(0, 2000)};
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0), // streams and timers of the clients must not keep us alive
  err => {
    process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  }
);
