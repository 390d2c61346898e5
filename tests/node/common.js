// Helpers shared by the Node scripts the tests run (client.js, iam_table.js).
'use strict';

// `promise`, or a rejection naming `what` after `ms` milliseconds.
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// What a failed call said, as JSON for the Python side.
function describe(err) {
  return {
    code: err.code ?? null, // gRPC status code (7 PERMISSION_DENIED, 16 UNAUTHENTICATED, ...)
    statusCode: err.statusCode ?? err.response?.status ?? null, // HTTP status (REST)
    message: String(err.message ?? err).slice(0, 500),
    cause: err.cause ? String(err.cause.code ?? err.cause.message ?? err.cause) : null,
  };
}

module.exports = {withTimeout, describe};
