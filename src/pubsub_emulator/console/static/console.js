// The emulator's web console: one page, vanilla JavaScript, no build step (docs/console.md).
//
// Everything Google's API can do goes through the emulator's own REST API (/v1/..., Google's
// JSON), so IAM applies to the console as to any client under --auth; only what that API
// cannot give (projects, backlog figures, rates, push health, peek) comes from /console/api/.
// Data is only ever put in the page as text (textContent, text nodes, attribute values), and
// the Content-Security-Policy allows no inline script: nothing shown can run as code.
"use strict";

(() => {
  const CONSOLE_API = "/console/api";
  const POLL_MS = 2000;
  const TOKEN_KEY = "pubsubConsole.token";
  const SA_KEY = "pubsubConsole.serviceAccountKey";
  const AUDIENCE = "https://pubsub.googleapis.com/"; // what the emulator accepts (auth/verify.py)
  const DEAD_LETTER_PREFIX = "CloudPubSubDeadLetter";
  const REPLAY_BATCH = 100;
  const REPLAY_MAX_ROUNDS = 100;

  const byId = (id) => document.getElementById(id);

  // --- building the page, as text only ----------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child)); // strings become text nodes
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat(Infinity)) {
      if (child !== undefined && child !== null && child !== false) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
  }

  function table(headers, rows, empty) {
    const head = el("tr", null, headers.map((h) => el("th", { class: h.num ? "num" : null },
      h.label ?? h)));
    const body = rows.length ? rows
      : [el("tr", null, el("td", { class: "empty", colspan: headers.length }, empty))];
    return el("table", null, el("thead", null, head), el("tbody", null, body));
  }

  function facts(pairs) {
    return el("dl", { class: "facts" }, pairs.filter((p) => p).map(([term, value]) =>
      [el("dt", null, term), el("dd", null, value)]));
  }

  // --- messages to the user ---------------------------------------------------------------
  function say(text, kind) {
    const banner = byId("banner");
    banner.textContent = text;
    banner.className = kind || "ok";
    banner.hidden = false;
  }

  // Go to another view; `message` shows there (the banner of the view left is cleared).
  let nextMessage = null;
  function navigate(hash, message) {
    nextMessage = message || null;
    location.hash = hash;
  }

  function fail(error) {
    say(error && error.message ? error.message : String(error), "error");
  }

  // --- formatting -------------------------------------------------------------------------
  const dash = "—";
  const count = (n) => (n === null || n === undefined ? dash : String(n));
  const rate = (r) => (r === null || r === undefined ? dash : `${r.toFixed(r < 10 ? 2 : 0)}/s`);

  function age(seconds) {
    if (seconds === null || seconds === undefined) return dash;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function when(value) {
    if (!value) return dash;
    const date = new Date(value); // ms since the epoch, or an RFC 3339 timestamp
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  const lastPart = (name) => String(name || "").split("/").pop();
  const encodeName = (name) => String(name).split("/").map(encodeURIComponent).join("/");
  const topicPath = (project, id) => `projects/${project}/topics/${id}`;
  const subPath = (project, id) => `projects/${project}/subscriptions/${id}`;

  function linkTo(name) {
    // projects/P/topics/T -> #/projects/P/topics/T (a fragment: never a script URL)
    return el("a", { href: `#/${encodeName(name)}` }, lastPart(name));
  }

  function bytesOf(base64) {
    const binary = atob(base64 || "");
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  }

  function base64Of(bytes) {
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  }

  function shownData(base64) {
    const bytes = bytesOf(base64);
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return `(binary, ${bytes.length} bytes) ${base64}`;
    }
  }

  function attributesText(attributes) {
    return Object.entries(attributes || {}).map(([k, v]) => `${k}=${v}`).join("\n");
  }

  // --- credentials (--auth) ---------------------------------------------------------------
  let minted = null; // {token, exp} signed with the stored service account key

  const b64url = (bytes) => base64Of(bytes).replace(/\+/g, "-").replace(/\//g, "_")
    .replace(/=+$/, "");

  async function mintJwt(key) {
    if (!window.crypto || !window.crypto.subtle) {
      throw new Error("This browser signs tokens only on https or localhost pages: paste a " +
        "bearer token instead.");
    }
    const pem = String(key.private_key).replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "");
    const signer = await crypto.subtle.importKey("pkcs8", bytesOf(pem),
      { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["sign"]);
    const iat = Math.floor(Date.now() / 1000);
    const exp = iat + 3600;
    const encoder = new TextEncoder();
    const header = { alg: "RS256", typ: "JWT", kid: key.private_key_id };
    const claims = { iss: key.client_email, sub: key.client_email, aud: AUDIENCE, iat, exp };
    const input = `${b64url(encoder.encode(JSON.stringify(header)))}.` +
      b64url(encoder.encode(JSON.stringify(claims)));
    const signature = await crypto.subtle.sign("RSASSA-PKCS1-v1_5", signer,
      encoder.encode(input));
    return { token: `${input}.${b64url(new Uint8Array(signature))}`, exp };
  }

  async function bearer() {
    const pasted = sessionStorage.getItem(TOKEN_KEY);
    if (pasted) return pasted;
    const key = sessionStorage.getItem(SA_KEY);
    if (!key) return null;
    if (!minted || minted.exp - 300 < Date.now() / 1000) minted = await mintJwt(JSON.parse(key));
    return minted.token;
  }

  function showSignIn(show) {
    byId("sign-in").hidden = !show;
    byId("view").hidden = show;
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(SA_KEY);
    minted = null;
    byId("who").textContent = "";
    byId("sign-out").hidden = true;
    showSignIn(true);
  }

  async function signIn(event) {
    event.preventDefault();
    const token = byId("token-input").value.trim();
    const keyText = byId("key-input").value.trim();
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(SA_KEY);
    minted = null;
    try {
      if (token) {
        sessionStorage.setItem(TOKEN_KEY, token);
      } else if (keyText) {
        const key = JSON.parse(keyText);
        if (!key.private_key || !key.client_email || !key.private_key_id) {
          throw new Error("This is not a service account key (private_key, private_key_id " +
            "and client_email are needed).");
        }
        minted = await mintJwt(key);
        sessionStorage.setItem(SA_KEY, JSON.stringify(key));
      } else {
        throw new Error("Paste a token or a key first.");
      }
    } catch (error) {
      fail(error);
      return;
    }
    byId("token-input").value = "";
    byId("key-input").value = "";
    byId("banner").hidden = true;
    await start();
  }

  function readKeyFile() {
    const file = byId("key-file").files[0];
    if (file) file.text().then((text) => { byId("key-input").value = text; }, fail);
  }

  // --- calling the emulator -----------------------------------------------------------------
  class CallError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = await bearer();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      data = null;
    }
    if (response.status === 401) {
      if (token) say("The emulator refused this credential: sign in again.", "error");
      showSignIn(true);
    }
    if (!response.ok) {
      const message = data && data.error && data.error.message;
      throw new CallError(response.status, `${method} ${path}: ${response.status} ` +
        (message || response.statusText));
    }
    return data || {};
  }

  const api = (method, name, verb, body) =>
    call(method, `/v1/${encodeName(name)}${verb ? `:${verb}` : ""}`, body);
  const overviewOf = (project) =>
    call("GET", `${CONSOLE_API}/projects/${encodeURIComponent(project)}/overview`);

  // --- forms ------------------------------------------------------------------------------
  function field(label, input) {
    return el("label", null, label, input);
  }

  function inlineForm(submitLabel, fields, action) {
    const button = el("button", { type: "submit" }, submitLabel);
    const form = el("form", { class: "inline" }, fields, button);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      try {
        await action(form);
      } catch (error) {
        fail(error);
      } finally {
        button.disabled = false;
      }
    });
    return form;
  }

  // A destructive action asks once more in the page (no browser dialog).
  function confirmButton(label, question, action, id) {
    const holder = el("span", null);
    const idle = () => replace(holder, el("button", {
      type: "button", class: "danger", id, onclick: () => replace(holder,
        el("span", { class: "muted" }, question, " "),
        el("button", { type: "button", class: "danger sure", id: id && `${id}-confirm`,
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              await action();
            } catch (error) {
              fail(error);
            }
            idle();
          } }, `Yes, ${label.toLowerCase()}`),
        " ",
        el("button", { type: "button", class: "quiet", onclick: idle }, "Cancel")),
    }, label));
    idle();
    return holder;
  }

  function parseAttributes(text) {
    const attributes = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at <= 0) throw new Error(`Attributes are key=value lines: "${line}" is not.`);
      attributes[line.slice(0, at).trim()] = line.slice(at + 1);
    }
    return attributes;
  }

  // --- figures shared by views ----------------------------------------------------------------
  let clockOffsetMs = 0; // the emulator's clock minus this browser's, from the last overview

  function noteClock(overview) {
    if (overview && overview.nowMs) clockOffsetMs = overview.nowMs - Date.now();
  }

  function pushHealth(push) {
    if (!push) return el("span", { class: "muted" }, "pull");
    const status = push.lastStatus === null ? "no attempt yet" : `last ${push.lastStatus}`;
    const failing = push.inBackoff || (push.lastStatus !== null && push.lastStatus >= 300) ||
      Boolean(push.lastError);
    return el("span", { class: failing ? "push-failing" : "push-ok" },
      status,
      push.lastError ? ` (${push.lastError})` : "",
      push.inBackoff ? ` · backing off ${push.backoffSeconds.toFixed(1)} s` : "",
      push.failures ? ` · ${push.failures} failures` : "");
  }

  const SUB_HEADERS = ["Subscription", "Topic", "Delivery",
    { label: "Backlog", num: true }, { label: "Outstanding", num: true },
    { label: "Oldest unacked", num: true }, { label: "Delivered", num: true },
    { label: "Acked", num: true }, "Dead letters to"];

  function subscriptionRow(row) {
    const sub = row.subscription;
    const dlq = sub.deadLetterPolicy && sub.deadLetterPolicy.deadLetterTopic;
    return el("tr", { "data-name": sub.name },
      el("td", null, linkTo(sub.name),
        row.deadLetterSubscription ? el("span", { class: "tag" }, "dead letters") : null),
      el("td", null, sub.topic && sub.topic.startsWith("projects/") ? linkTo(sub.topic)
        : sub.topic),
      el("td", { class: "push" }, pushHealth(row.push)),
      el("td", { class: "num backlog" }, count(row.backlog)),
      el("td", { class: "num outstanding" }, count(row.outstanding)),
      el("td", { class: "num oldest" }, age(row.oldestUnackedAgeSeconds)),
      el("td", { class: "num delivery-rate" }, rate(row.deliveryRate)),
      el("td", { class: "num ack-rate" }, rate(row.ackRate)),
      el("td", null, dlq ? [linkTo(dlq), ` after ${sub.deadLetterPolicy.maxDeliveryAttempts ||
        5} attempts`] : dash));
  }

  // --- views --------------------------------------------------------------------------------
  // Each view builds its page once (forms keep what is typed) and `refresh` fills its figures;
  // the poller calls `refresh` every POLL_MS while the tab is visible.

  function projectsView() {
    const list = el("div", null);
    const open = inlineForm("Open", field("Project id", el("input", {
      name: "project", id: "open-project", required: true, spellcheck: "false" })),
    async (form) => {
      navigate(`#/projects/${encodeURIComponent(form.project.value.trim())}`);
    });
    return {
      crumbs: [],
      body: [el("h1", null, "Projects"), list,
        el("h2", null, "Open a project"),
        el("p", { class: "muted" }, "A project exists once it holds a resource: open one by " +
          "its id to create its first topic."), open],
      async refresh() {
        const { projects } = await call("GET", `${CONSOLE_API}/projects`);
        replace(list, table(["Project", { label: "Topics", num: true },
          { label: "Subscriptions", num: true }, { label: "Schemas", num: true }],
        projects.map((p) => el("tr", { "data-name": `projects/${p.id}` },
          el("td", null, el("a", { href: `#/projects/${encodeURIComponent(p.id)}` }, p.id)),
          el("td", { class: "num" }, String(p.topics)),
          el("td", { class: "num" }, String(p.subscriptions)),
          el("td", { class: "num" }, String(p.schemas)))),
        "No project holds a resource you may see."));
      },
    };
  }

  function projectView(project) {
    const topics = el("div", null);
    const subs = el("div", null);
    const notice = el("p", { class: "muted" });
    const topicChoices = el("datalist", { id: "topic-choices" });
    const deleteButtons = new Map(); // kept across refreshes: a started confirmation stays
    const deleteButton = (name) => {
      if (!deleteButtons.has(name)) {
        deleteButtons.set(name, confirmButton("Delete", `Delete topic ${lastPart(name)}?`,
          async () => {
            await api("DELETE", name);
            say(`Deleted ${name}.`);
            deleteButtons.delete(name);
            await refreshNow();
          }));
      }
      return deleteButtons.get(name);
    };
    const createTopic = inlineForm("Create topic", field("Topic id", el("input", {
      name: "topicId", id: "new-topic", required: true, spellcheck: "false" })),
    async (form) => {
      const name = topicPath(project, form.topicId.value.trim());
      await api("PUT", name, "", {});
      say(`Created ${name}.`);
      form.reset();
      await refreshNow();
    });
    const createSub = inlineForm("Create subscription", [
      field("Subscription id", el("input", { name: "subId", id: "new-subscription",
        required: true, spellcheck: "false" })),
      field("Topic id", el("input", { name: "topicId", id: "new-subscription-topic",
        list: "topic-choices", required: true, spellcheck: "false" })),
      field("Ack deadline (s)", el("input", { name: "ackDeadline", type: "number", min: 10,
        max: 600, value: 10 })),
      field("Push endpoint (empty: pull)", el("input", { name: "pushEndpoint", type: "url",
        spellcheck: "false" })),
      field("Dead-letter topic id", el("input", { name: "deadLetterTopic", list: "topic-choices",
        id: "new-subscription-dlq", spellcheck: "false" })),
      field("Max delivery attempts", el("input", { name: "maxAttempts", type: "number", min: 5,
        max: 100, value: 5, id: "new-subscription-attempts" })),
    ], async (form) => {
      const name = subPath(project, form.subId.value.trim());
      const body = { topic: topicPath(project, form.topicId.value.trim()),
        ackDeadlineSeconds: Number(form.ackDeadline.value) };
      if (form.pushEndpoint.value.trim()) {
        body.pushConfig = { pushEndpoint: form.pushEndpoint.value.trim() };
      }
      if (form.deadLetterTopic.value.trim()) {
        body.deadLetterPolicy = {
          deadLetterTopic: topicPath(project, form.deadLetterTopic.value.trim()),
          maxDeliveryAttempts: Number(form.maxAttempts.value) };
      }
      await api("PUT", name, "", body);
      say(`Created ${name}.`);
      form.reset();
      await refreshNow();
    });
    return {
      crumbs: [[project, `#/projects/${encodeURIComponent(project)}`]],
      body: [el("h1", null, `Project ${project}`),
        el("p", null, el("a", { href: `#/projects/${encodeURIComponent(project)}/schemas` },
          "Schemas")),
        notice, topicChoices,
        el("h2", null, "Topics"), topics, createTopic,
        el("h2", null, "Subscriptions"), subs, createSub],
      async refresh() {
        const overview = await overviewOf(project);
        noteClock(overview);
        notice.textContent = overview.truncated ? "Only the first 1000 of each kind are shown."
          : "";
        replace(topicChoices, overview.topics.map((t) =>
          el("option", { value: lastPart(t.topic.name) })));
        replace(topics, table(["Topic", { label: "Subscriptions", num: true },
          { label: "Published", num: true }, "Dead-letter topic of", ""],
        overview.topics.map((row) => {
          const name = row.topic.name;
          const attached = overview.subscriptions.filter((s) => s.subscription.topic === name);
          return el("tr", { "data-name": name },
            el("td", null, linkTo(name)),
            el("td", { class: "num" }, String(attached.length)),
            el("td", { class: "num publish-rate" }, rate(row.publishRate)),
            el("td", null, row.deadLetterFor.length
              ? row.deadLetterFor.map((s, i) => [i ? ", " : "", linkTo(s)]) : dash),
            el("td", null, deleteButton(name)));
        }), "No topics you may see."));
        replace(subs, table(SUB_HEADERS, overview.subscriptions.map(subscriptionRow),
          "No subscriptions you may see."));
      },
    };
  }

  function topicView(project, id) {
    const name = topicPath(project, id);
    const details = el("div", null);
    const subs = el("div", null);
    const publish = inlineForm("Publish", [
      field("Data (text)", el("textarea", { name: "messageData", id: "publish-data", rows: 3,
        cols: 40 })),
      field("Attributes (key=value lines)", el("textarea", { name: "messageAttributes",
        id: "publish-attributes", rows: 3, cols: 30, spellcheck: "false" })),
      field("Ordering key", el("input", { name: "orderingKey", id: "publish-ordering-key",
        spellcheck: "false" })),
    ], async (form) => {
      const message = { data: base64Of(new TextEncoder().encode(form.messageData.value)),
        attributes: parseAttributes(form.messageAttributes.value) };
      if (form.orderingKey.value) message.orderingKey = form.orderingKey.value;
      const answer = await api("POST", name, "publish", { messages: [message] });
      say(`Published message ${answer.messageIds[0]} to ${id}.`);
      await refreshNow();
    });
    const remove = confirmButton("Delete", `Delete topic ${id}?`, async () => {
      await api("DELETE", name);
      navigate(`#/projects/${encodeURIComponent(project)}`, `Deleted ${name}.`);
    }, "delete-topic");
    return {
      crumbs: [[project, `#/projects/${encodeURIComponent(project)}`], [`topic ${id}`, null]],
      body: [el("h1", null, `Topic ${id}`), details,
        el("h2", null, "Publish a message"), publish,
        el("h2", null, "Subscriptions"), subs,
        el("div", { class: "actions" }, remove)],
      async refresh() {
        const overview = await overviewOf(project);
        noteClock(overview);
        const row = overview.topics.find((t) => t.topic.name === name);
        if (!row) {
          replace(details, el("p", { class: "muted" },
            "This topic does not exist, or you may not see it."));
          replace(subs);
          return;
        }
        const topic = row.topic;
        const schema = topic.schemaSettings;
        replace(details, facts([
          ["Name", topic.name],
          ["Published", rate(row.publishRate)],
          ["Labels", attributesText(topic.labels) || dash],
          ["Schema", schema ? [linkTo(schema.schema), ` (${schema.encoding || "JSON"})`] : dash],
          ["Message retention", topic.messageRetentionDuration || dash],
          row.deadLetterFor.length
            ? ["Dead-letter topic of", row.deadLetterFor.map((s, i) => [i ? ", " : "", linkTo(s)])]
            : null,
        ]));
        replace(subs, table(SUB_HEADERS, overview.subscriptions
          .filter((s) => s.subscription.topic === name).map(subscriptionRow),
        "No subscriptions you may see."));
      },
    };
  }

  function peekTable(messages) {
    return table(["Message id", "Published", "Data", "Attributes", "Ordering key",
      { label: "Attempt", num: true }, "Leased until"],
    messages.map((m) => el("tr", { "data-message-id": m.message.messageId },
      el("td", null, m.message.messageId),
      el("td", null, when(m.message.publishTime)),
      el("td", null, el("pre", { class: "data" }, shownData(m.message.data))),
      el("td", null, el("pre", { class: "data" }, attributesText(m.message.attributes))),
      el("td", null, m.message.orderingKey || dash),
      el("td", { class: "num" }, String(m.deliveryAttempt)),
      el("td", null, m.leasedUntilMs ? when(m.leasedUntilMs) : "not leased"))),
    "No pending messages.");
  }

  // Replay a dead-letter subscription: each message goes back to the topic of the subscription
  // that dead-lettered it (its CloudPubSubDeadLetter* attributes removed), and is acknowledged
  // only once published: stopped midway, nothing is lost (at least once).
  async function replay(name) {
    const topics = new Map();
    const skipped = [];
    let replayed = 0;
    for (let round = 0; round < REPLAY_MAX_ROUNDS; round += 1) {
      const pulled = await api("POST", name, "pull",
        { maxMessages: REPLAY_BATCH, returnImmediately: true });
      const received = pulled.receivedMessages || [];
      if (!received.length) break;
      const published = [];
      try {
        for (const { ackId, message } of received) {
          const attributes = message.attributes || {};
          const source = attributes.CloudPubSubDeadLetterSourceSubscription;
          const sourceProject = attributes.CloudPubSubDeadLetterSourceSubscriptionProject;
          if (!source || !sourceProject) {
            skipped.push(ackId);
            continue;
          }
          const sourceName = subPath(sourceProject, source);
          if (!topics.has(sourceName)) topics.set(sourceName, (await api("GET", sourceName)).topic);
          const kept = Object.fromEntries(Object.entries(attributes)
            .filter(([key]) => !key.startsWith(DEAD_LETTER_PREFIX)));
          const again = { data: message.data || "", attributes: kept };
          if (message.orderingKey) again.orderingKey = message.orderingKey;
          await api("POST", topics.get(sourceName), "publish", { messages: [again] });
          published.push(ackId);
          replayed += 1;
        }
      } finally {
        if (published.length) await api("POST", name, "acknowledge", { ackIds: published });
      }
    }
    if (skipped.length) { // not dead letters: handed back at once, untouched
      await api("POST", name, "modifyAckDeadline", { ackIds: skipped, ackDeadlineSeconds: 0 });
    }
    return { replayed, skipped: skipped.length };
  }

  function subscriptionView(project, id) {
    const name = subPath(project, id);
    const details = el("div", null);
    const push = el("div", null);
    const peeked = el("div", { id: "peeked" });
    const replayHolder = el("span", null);
    const peekForm = inlineForm("Peek", field("Messages", el("input", { name: "count",
      type: "number", min: 1, max: 100, value: 10 })), async (form) => {
      const answer = await call("GET", `${CONSOLE_API}/${encodeName(name)}:peek` +
        `?maxMessages=${encodeURIComponent(form.count.value)}`);
      replace(peeked, peekTable(answer.messages));
    });
    peekForm.querySelector("button").id = "peek";
    const purge = confirmButton("Purge", "Acknowledge every message published until now?",
      async () => {
        const now = new Date(Date.now() + Math.max(0, clockOffsetMs));
        await api("POST", name, "seek", { time: now.toISOString() });
        say(`Purged ${id} (seek to ${now.toISOString()}).`);
        replace(peeked);
        await refreshNow();
      }, "purge");
    const replayButton = el("button", { type: "button", id: "replay", onclick: async () => {
      replayButton.disabled = true;
      try {
        const done = await replay(name);
        say(`Replayed ${done.replayed} message(s) to their source topics` +
          (done.skipped ? `; ${done.skipped} without a dead-letter source left as they were.`
            : "."));
        await refreshNow();
      } catch (error) {
        fail(error);
      } finally {
        replayButton.disabled = false;
      }
    } }, "Replay to source topic");
    const remove = confirmButton("Delete", `Delete subscription ${id}?`, async () => {
      await api("DELETE", name);
      navigate(`#/projects/${encodeURIComponent(project)}`, `Deleted ${name}.`);
    }, "delete-subscription");
    return {
      crumbs: [[project, `#/projects/${encodeURIComponent(project)}`],
        [`subscription ${id}`, null]],
      body: [el("h1", null, `Subscription ${id}`), details, push,
        el("div", { class: "actions" }, purge, replayHolder, remove),
        el("h2", null, "Pending messages"),
        el("p", { class: "muted" }, "Peeking shows messages without delivering them: their " +
          "leases, delivery attempts and order stay as they were."),
        peekForm, peeked],
      async refresh() {
        const overview = await overviewOf(project);
        noteClock(overview);
        const row = overview.subscriptions.find((s) => s.subscription.name === name);
        if (!row) {
          replace(details, el("p", { class: "muted" },
            "This subscription does not exist, or you may not see it."));
          replace(push);
          return;
        }
        const sub = row.subscription;
        const dlq = sub.deadLetterPolicy;
        const topicRow = overview.topics.find((t) => t.topic.name === sub.topic);
        const sources = topicRow ? topicRow.deadLetterFor : [];
        replace(details, el("table", { id: "figures" }, el("tbody", null,
          el("tr", { "data-name": name },
            el("th", null, "Backlog"), el("td", { class: "num backlog" }, count(row.backlog)),
            el("th", null, "Outstanding"),
            el("td", { class: "num outstanding" }, count(row.outstanding)),
            el("th", null, "Oldest unacked"),
            el("td", { class: "num oldest" }, age(row.oldestUnackedAgeSeconds)),
            el("th", null, "Delivered"),
            el("td", { class: "num delivery-rate" }, rate(row.deliveryRate)),
            el("th", null, "Acked"), el("td", { class: "num ack-rate" }, rate(row.ackRate))))),
        facts([
          ["Topic", sub.topic && sub.topic.startsWith("projects/") ? linkTo(sub.topic)
            : sub.topic],
          ["Ack deadline", `${sub.ackDeadlineSeconds || 10} s`],
          ["Filter", sub.filter || dash],
          ["Message ordering", sub.enableMessageOrdering ? "on" : "off"],
          ["Exactly once", sub.enableExactlyOnceDelivery ? "on" : "off"],
          ["Dead letters to", dlq && dlq.deadLetterTopic ? [linkTo(dlq.deadLetterTopic),
            ` after ${dlq.maxDeliveryAttempts || 5} attempts`] : dash],
          sources.length ? ["Receives dead letters of", sources.map((s, i) =>
            [i ? ", " : "", linkTo(s)])] : null,
          ["Retry policy", sub.retryPolicy ? `backoff ${sub.retryPolicy.minimumBackoff ||
            "10s"} to ${sub.retryPolicy.maximumBackoff || "600s"}` : "immediate"],
          sub.detached ? ["Detached", "yes"] : null,
        ]));
        replace(push, row.push ? [el("h2", null, "Push endpoint"), facts([
          ["Endpoint", row.push.endpoint],
          ["Health", pushHealth(row.push)],
          ["Last attempt", row.push.lastAttemptUnix ? when(row.push.lastAttemptUnix * 1000)
            : dash],
          ["Pushed by", row.push.ownedHere ? "this process" : (row.push.owner || "no process")],
          row.push.attempts !== null ? ["Attempts (this process)", `${row.push.attempts}, ` +
            `${row.push.delivered} delivered, ${row.push.nacked} refused`] : null,
        ])] : []);
        replace(replayHolder, row.deadLetterSubscription ? replayButton : null);
      },
    };
  }

  function schemasView(project) {
    const list = el("div", null);
    const shown = el("div", { id: "schema" });
    async function open(schemaName) {
      const schema = await api("GET", schemaName, "", undefined);
      replace(shown, el("h2", null, `Schema ${lastPart(schema.name)}`),
        facts([["Type", schema.type], ["Revision", schema.revisionId || dash],
          ["Created", when(schema.revisionCreateTime)]]),
        el("pre", { class: "schema" }, schema.definition || ""));
    }
    return {
      crumbs: [[project, `#/projects/${encodeURIComponent(project)}`], ["schemas", null]],
      body: [el("h1", null, `Schemas of ${project}`), list, shown],
      async refresh() {
        let answer;
        try {
          answer = await call("GET", `/v1/projects/${encodeURIComponent(project)}/schemas`);
        } catch (error) {
          if (error.status !== 403) throw error;
          replace(list, el("p", { class: "muted" }, "You may not list this project's schemas."));
          return;
        }
        replace(list, table(["Schema", "Type", "Revision", "Created"],
          (answer.schemas || []).map((s) => el("tr", { "data-name": s.name },
            el("td", null, el("a", { href: "#", onclick: (event) => {
              event.preventDefault();
              open(s.name).catch(fail);
            } }, lastPart(s.name))),
            el("td", null, s.type || dash), el("td", null, s.revisionId || dash),
            el("td", null, when(s.revisionCreateTime)))),
        "No schemas."));
      },
    };
  }

  // --- routing and live updates ---------------------------------------------------------------
  let current = null;
  let refreshing = null;

  function viewFor(hash) {
    const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    if (parts[0] !== "projects" || !parts[1]) return projectsView();
    const [, project, kind, id] = parts;
    if (kind === "topics" && id) return topicView(project, id);
    if (kind === "subscriptions" && id) return subscriptionView(project, id);
    if (kind === "schemas") return schemasView(project);
    return projectView(project);
  }

  function route() {
    let view;
    try {
      view = viewFor(location.hash);
    } catch (error) { // a malformed fragment
      view = projectsView();
    }
    current = view;
    if (nextMessage) say(nextMessage);
    else byId("banner").hidden = true;
    nextMessage = null;
    const crumbs = byId("crumbs");
    replace(crumbs, view.crumbs.map(([label, href]) => [el("span", { class: "sep" }, "/"),
      href ? el("a", { href }, label) : el("span", null, label)]));
    replace(byId("view"), view.body);
    refreshNow();
  }

  // A refresh that starts after this call (after the one under way, if any), so what an
  // action just changed shows.
  function refreshNow() {
    if (refreshing) return refreshing.then(refreshNow);
    if (!current) return Promise.resolve();
    refreshing = current.refresh().then(() => {
      byId("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    }, (error) => {
      if (!(error instanceof CallError && error.status === 401)) fail(error);
    }).finally(() => { refreshing = null; });
    return refreshing;
  }

  function poll() {
    const wanted = !document.hidden && byId("live").checked && byId("sign-in").hidden;
    if (wanted && !refreshing) refreshNow();
    setTimeout(poll, POLL_MS);
  }

  async function start() {
    let session;
    try {
      session = await call("GET", `${CONSOLE_API}/session`);
    } catch (error) {
      if (!(error instanceof CallError && error.status === 401)) fail(error);
      return;
    }
    showSignIn(false);
    byId("who").textContent = session.auth ? `${session.email}${session.admin ? " (admin)"
      : ""}` : "no --auth: open to anyone";
    byId("sign-out").hidden = !session.auth;
    route();
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("sign-in-form").addEventListener("submit", signIn);
    byId("key-file").addEventListener("change", readKeyFile);
    byId("sign-out").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshNow();
    });
    start().finally(() => setTimeout(poll, POLL_MS));
  });
})();
