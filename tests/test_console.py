"""The web console at /console/ (src/pubsub_emulator/console/, README "Console").

- In a real browser (headless Chromium through Selenium, console_browser.py): the console
  creates topics and subscriptions, publishes with attributes and an ordering key, shows the
  backlog grow, peeks messages that a Pull by Google's client then still receives as a first
  delivery, purges, replays a dead-lettered message to its source topic, shows a schema and
  deletes a topic; a screenshot of each page goes to the test's temporary directory. Under
  --auth the page signs its own tokens with a pasted service account key and shows only what
  that account may see.
- The console's JSON API over plain HTTP: projects, figures (backlog, outstanding, oldest
  unacked age, rates, push health, dead-letter topics), peek and its errors; under --auth 401
  without a credential, and only what the caller may get.
- The page itself: served with a strict Content-Security-Policy, no inline script, and a
  script that never writes HTML.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from clients import create_key, make_clients, self_signed_token, unique
from console_browser import CHROMIUM_MISSING, Browser, chromium_installed
from pubsub_emulator.console.rates import WINDOW_S, RateMeter
from push_endpoint import Receiver, statuses
from support import REPO, EmulatorProcess, wait_for

STATIC = REPO / "src" / "pubsub_emulator" / "console" / "static"
# Run by hand without Chromium, the browser tests say why they skip; under CI (which runs
# `make test`, whose `chromium` target installs it) they never skip: a missing browser fails.
needs_chromium = pytest.mark.skipif(not chromium_installed() and not os.environ.get("CI"),
                                    reason=CHROMIUM_MISSING)


def call(host: str, method: str, path: str, body: Any = None, token: str | None = None
         ) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"http://{host}{path}", json=body, headers=headers,
                            timeout=30)


def ok(response: requests.Response) -> Any:
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def overview(host: str, project: str, token: str | None = None) -> dict[str, Any]:
    return ok(call(host, "GET", f"/console/api/projects/{project}/overview", token=token))


def row(found: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    key = "topic" if kind == "topics" else "subscription"
    return next(r for r in found[kind] if r[key]["name"] == name)


def make_topic(host: str, project: str, topic_id: str) -> str:
    name = f"projects/{project}/topics/{topic_id}"
    ok(call(host, "PUT", f"/v1/{name}", {}))
    return name


def make_subscription(host: str, project: str, sub_id: str, topic: str, **fields: Any) -> str:
    name = f"projects/{project}/subscriptions/{sub_id}"
    ok(call(host, "PUT", f"/v1/{name}", {"topic": topic, **fields}))
    return name


def publish(host: str, topic: str, *texts: str, **attributes: str) -> list[str]:
    messages = [{"data": base64.b64encode(t.encode()).decode(), "attributes": attributes}
                for t in texts]
    return ok(call(host, "POST", f"/v1/{topic}:publish", {"messages": messages}))["messageIds"]


# --- the page and its headers ------------------------------------------------------------------

def test_the_page_is_served_with_a_strict_policy_and_writes_no_html(emulator):
    base = f"http://{emulator.host}"
    redirect = requests.get(f"{base}/console", allow_redirects=False, timeout=10)
    assert redirect.status_code == 302 and redirect.headers["Location"] == "/console/"
    for path, kind in (("/console/", "text/html"), ("/console/console.js", "text/javascript"),
                       ("/console/console.css", "text/css")):
        answer = requests.get(f"{base}{path}", timeout=10)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(kind)
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    api = requests.get(f"{base}/console/api/projects", timeout=10)
    assert "Content-Security-Policy" in api.headers
    assert requests.get(f"{base}/console/other.js", timeout=10).status_code == 404
    page = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all(' src="' in tag for tag in scripts)  # no inline script
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handler
    script = (STATIC / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script, sink


def test_rates_are_the_change_over_the_window():
    now = [100.0]
    meter = RateMeter(clock=lambda: now[0])
    assert meter.record({"a": 5}) == {"a": None}  # one reading: no rate yet
    now[0] += 2
    assert meter.record({"a": 9}) == {"a": 2.0}
    for step in range(1, 11):  # a steady 3/s for longer than the window
        now[0] += 2
        rates = meter.record({"a": 9 + 6 * step})
    assert rates["a"] == pytest.approx(3.0)
    now[0] += WINDOW_S * 2
    assert meter.record({"a": 69})["a"] == 0.0  # nothing since: the rate falls to 0
    now[0] += 1
    assert meter.record({"a": 1})["a"] is None  # a counter that restarted starts afresh


# --- the JSON API, without --auth ----------------------------------------------------------

def test_projects_and_figures(emulator):
    host, project = emulator.host, unique("figs")
    topic = make_topic(host, project, "orders")
    dead = make_topic(host, project, "orders-dead")
    sub = make_subscription(host, project, "orders-sub", topic, deadLetterPolicy={
        "deadLetterTopic": dead, "maxDeliveryAttempts": 5})
    dead_sub = make_subscription(host, project, "orders-dead-sub", dead)
    projects = ok(call(host, "GET", "/console/api/projects"))["projects"]
    assert {"id": project, "topics": 2, "subscriptions": 2, "schemas": 0} in projects
    before = overview(host, project)
    assert row(before, "subscriptions", sub)["ackRate"] is None  # first reading
    publish(host, topic, "a", "b", "c")
    ok(call(host, "POST", f"/v1/{sub}:pull", {"maxMessages": 1}))  # leased, not acked
    found = overview(host, project)
    figures = row(found, "subscriptions", sub)
    assert (figures["backlog"], figures["outstanding"]) == (3, 1)
    assert figures["oldestUnackedAgeSeconds"] >= 0
    assert figures["deliveryRate"] > 0 and figures["ackRate"] == 0
    assert row(found, "topics", topic)["publishRate"] > 0
    assert row(found, "topics", dead)["deadLetterFor"] == [sub]
    assert row(found, "subscriptions", dead_sub)["deadLetterSubscription"] is True
    assert row(found, "subscriptions", sub)["deadLetterSubscription"] is False
    assert figures["push"] is None
    assert found["truncated"] is False
    assert call(host, "GET", "/console/api/projects/bad%20id/overview").status_code == 400


def test_push_health_shows_the_last_status_and_the_backoff(emulator):
    host, project = emulator.host, unique("pushfig")
    receiver = Receiver(answer=statuses(then=503)).start()
    try:
        topic = make_topic(host, project, "pushed")
        sub = make_subscription(host, project, "pushed-sub", topic,
                                pushConfig={"pushEndpoint": receiver.url("/push?token=secret")})
        publish(host, topic, "refused")

        def failing() -> dict[str, Any] | None:
            push = row(overview(host, project), "subscriptions", sub)["push"]
            return push if push["lastStatus"] == 503 and push["inBackoff"] else None

        push = wait_for(failing, timeout=30, message="the push endpoint's 503 in the console")
        assert push["ownedHere"] is True and push["backoffSeconds"] > 0
        assert push["attempts"] >= 1 and push["delivered"] == 0
        assert "secret" not in push["endpoint"]  # query values hidden, as in logs
        ok(call(host, "DELETE", f"/v1/{sub}"))  # (the session's emulator stops pushing it)
    finally:
        receiver.stop()


def test_peek_shows_pending_messages_and_leaves_their_delivery(emulator):
    host, project = emulator.host, unique("peek")
    topic = make_topic(host, project, "peeked")
    sub = make_subscription(host, project, "peeked-sub", topic)
    ids = publish(host, topic, "first", "second", color="blue")
    path = f"/console/api/{sub}:peek"
    peeked = ok(call(host, "GET", f"{path}?maxMessages=5"))["messages"]
    assert [m["message"]["messageId"] for m in peeked] == ids
    assert peeked[0]["message"]["attributes"] == {"color": "blue"}
    assert base64.b64decode(peeked[0]["message"]["data"]) == b"first"
    assert peeked[0]["deliveryAttempt"] == 0 and peeked[0]["leasedUntilMs"] is None
    assert len(ok(call(host, "GET", f"{path}?maxMessages=1"))["messages"]) == 1
    pulled = ok(call(host, "POST", f"/v1/{sub}:pull", {"maxMessages": 10}))["receivedMessages"]
    assert sorted(m["message"]["messageId"] for m in pulled) == sorted(ids)  # still delivered
    leased = ok(call(host, "GET", path))["messages"]
    assert all(m["leasedUntilMs"] and m["deliveryAttempt"] == 1 for m in leased)


@pytest.mark.parametrize(("path", "status"), [
    ("/console/api/projects/{p}/subscriptions/ab:peek", 400),  # an id of 2 characters
    ("/console/api/projects/{p}/subscriptions/goog-reserved:peek", 400),
    ("/console/api/projects/{p}/subscriptions/never-made:peek", 404),
    ("/console/api/projects/{p}/subscriptions/never-made:peek?maxMessages=0", 400),
    ("/console/api/projects/{p}/subscriptions/never-made:peek?maxMessages=many", 400),
])
def test_peek_errors_are_googles(emulator, path, status):
    answer = call(emulator.host, "GET", path.format(p=unique("peekerr")))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == status
    assert error["status"] == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")


# --- the whole flow in a real browser ----------------------------------------------------------

def nack_until_dead_lettered(subscriber: Any, sub: str, seen: Callable[[], bool]) -> None:
    """Pull and nack the subscription's messages until `seen()` (5 attempts, then the next
    delivery dead-letters it)."""

    def dead_lettered() -> bool:
        pulled = subscriber.pull(subscription=sub, max_messages=10, return_immediately=True)
        ack_ids = [m.ack_id for m in pulled.received_messages]
        if ack_ids:
            subscriber.modify_ack_deadline(subscription=sub, ack_ids=ack_ids,
                                           ack_deadline_seconds=0)
        return seen()

    wait_for(dead_lettered, timeout=30, interval=0.05, message="a message dead-lettered")


def create_in_page(browser: Browser, project: str) -> None:
    """Open the project, create two topics and a subscription with a dead-letter policy on
    the first, and one on the dead-letter topic."""
    browser.type("#open-project", project)
    browser.submit("#open-project")
    for topic_id in ("orders", "orders-dead", "scratch"):
        browser.type("#new-topic", topic_id)
        browser.submit("#new-topic")
        browser.find(f'tr[data-name="projects/{project}/topics/{topic_id}"]')
    for sub_id, topic_id, dead in (("orders-sub", "orders", "orders-dead"),
                                   ("orders-dead-sub", "orders-dead", "")):
        browser.type("#new-subscription", sub_id)
        browser.type("#new-subscription-topic", topic_id)
        browser.type("#new-subscription-dlq", dead)
        browser.submit("#new-subscription")
        browser.find(f'tr[data-name="projects/{project}/subscriptions/{sub_id}"]')


def publish_in_page(browser: Browser, sub: str, text: str, expected_backlog: str) -> None:
    browser.type("#publish-data", text)
    browser.type("#publish-attributes", "color=blue\nsize=2")
    browser.type("#publish-ordering-key", "customer-7")
    browser.submit("#publish-data")
    browser.wait_banner("Published message")
    browser.until(lambda: browser.cell(sub, "backlog") == expected_backlog,
                  f"the backlog to grow to {expected_backlog}")


@needs_chromium
def test_console_flow_in_a_real_browser(emulator, tmp_path):
    host, project = emulator.host, unique("browse")
    sub, dead_sub = (f"projects/{project}/subscriptions/orders-sub",
                     f"projects/{project}/subscriptions/orders-dead-sub")
    publisher, subscriber = make_clients(host, "grpc")
    browser = Browser(tmp_path)
    try:
        browser.open(f"http://{host}/console/")
        browser.find("#open-project")
        browser.shot("projects")
        create_in_page(browser, project)
        browser.until(lambda: browser.cell(sub, "backlog") == "0", "an empty backlog")
        browser.shot("project")
        browser.click(f'tr[data-name="projects/{project}/topics/orders"] a')
        browser.find("#publish-data")
        browser.until(lambda: browser.cell(sub, "backlog") == "0", "the topic's subscriptions")
        publish_in_page(browser, sub, "hello console", "1")
        publish_in_page(browser, sub, "second <b>message</b>", "2")
        browser.shot("topic")
        peeked = peek_in_page(browser, subscriber, project, sub)
        purge_in_page(browser, sub)
        replay_in_page(browser, host, (publisher, subscriber), project, sub, dead_sub)
        schema_in_page(browser, host, project)
        delete_in_page(browser, host, project)
        assert browser.script_errors() == []
    finally:
        browser.close()
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(shots) == 8 and all((tmp_path / s).stat().st_size > 5000 for s in shots), shots
    assert peeked


def peek_in_page(browser: Browser, subscriber: Any, project: str, sub: str) -> list[str]:
    """Peek both messages in the page; Google's client then pulls them as first deliveries."""
    browser.click(f'tr[data-name="{sub}"] a')
    browser.click("#peek")
    rows = browser.until(lambda: len(browser.driver.find_elements(
        "css selector", "#peeked tr[data-message-id]")) == 2 and browser.driver.find_elements(
        "css selector", "#peeked tr[data-message-id]"), "two peeked messages")
    ids = [r.get_attribute("data-message-id") for r in rows]
    assert "hello console" in rows[0].text and "color=blue" in rows[0].text
    assert "customer-7" in rows[0].text
    assert "second <b>message</b>" in rows[1].text  # shown as text, not markup
    browser.shot("subscription-peeked")
    pulled = subscriber.pull(subscription=sub, max_messages=10, timeout=30).received_messages
    assert sorted(m.message.message_id for m in pulled) == sorted(ids)
    assert all(m.delivery_attempt == 1 for m in pulled)  # peeking delivered nothing
    assert {m.message.data for m in pulled} == {b"hello console", b"second <b>message</b>"}
    assert all(m.message.ordering_key == "customer-7" for m in pulled)
    browser.until(lambda: browser.cell(sub, "outstanding") == "2", "2 outstanding")
    return ids


def purge_in_page(browser: Browser, sub: str) -> None:
    browser.click("#purge")
    browser.click("#purge-confirm")
    browser.wait_banner("Purged")
    browser.until(lambda: browser.cell(sub, "backlog") == "0", "the purged backlog")
    browser.shot("subscription-purged")


def replay_in_page(browser: Browser, host: str, clients: tuple[Any, Any], project: str,
                   sub: str, dead_sub: str) -> None:
    """A message nacked 5 times goes to the dead-letter topic; the page replays it."""
    publisher, subscriber = clients
    publisher.publish(f"projects/{project}/topics/orders", b"poison", origin="test").result(30)
    browser.open(f"http://{host}/console/#/{dead_sub}")
    browser.find("#figures")
    nack_until_dead_lettered(subscriber, sub, lambda: browser.cell(dead_sub, "backlog") == "1")
    browser.click("#replay")
    browser.wait_banner("Replayed 1 message")
    browser.until(lambda: browser.cell(dead_sub, "backlog") == "0", "the emptied dead letters")
    browser.shot("dead-letters-replayed")
    got = subscriber.pull(subscription=sub, max_messages=10, timeout=30).received_messages
    assert [m.message.data for m in got] == [b"poison"]
    assert dict(got[0].message.attributes) == {"origin": "test"}  # no CloudPubSubDeadLetter*
    assert got[0].delivery_attempt == 1  # a new message on the source topic
    subscriber.acknowledge(subscription=sub, ack_ids=[got[0].ack_id])


def schema_in_page(browser: Browser, host: str, project: str) -> None:
    definition = '{"type": "record", "name": "Order", "fields": [{"name": "id", "type": "int"}]}'
    ok(call(host, "POST", f"/v1/projects/{project}/schemas?schemaId=order",
            {"type": "AVRO", "definition": definition}))
    browser.open(f"http://{host}/console/#/projects/{project}/schemas")
    browser.click(f'tr[data-name="projects/{project}/schemas/order"] a')
    browser.until(lambda: '"name": "Order"' in browser.text("#schema pre"), "the definition")
    browser.shot("schemas")


def delete_in_page(browser: Browser, host: str, project: str) -> None:
    browser.open(f"http://{host}/console/#/projects/{project}")
    scratch = f'tr[data-name="projects/{project}/topics/scratch"]'
    browser.click(f"{scratch} button.danger")
    browser.click(f"{scratch} button.sure")
    browser.until(lambda: not browser.driver.find_elements("css selector", scratch),
                  "the deleted topic gone")
    browser.shot("project-after-delete")


# --- under --auth ----------------------------------------------------------------------------

PROJECT = "console-auth"
ADMIN = f"admin@{PROJECT}.iam.gserviceaccount.com"
ONE = f"one@{PROJECT}.iam.gserviceaccount.com"  # holds roles on one topic only


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Any]:
    """An emulator under --auth: topics `seen` and `unseen` with a subscription each, and a
    second project; ONE may view `seen` only (roles/pubsub.viewer on that topic)."""
    data = tmp_path_factory.mktemp("console-auth") / "data"
    data.mkdir()
    admin_key, one_key = create_key(data, ADMIN, "--admin"), create_key(data, ONE)
    with EmulatorProcess(data_dir=data, extra_args=["--auth"]) as emu:
        emu.admin, emu.one = self_signed_token(admin_key), self_signed_token(one_key)
        emu.one_key = one_key
        for topic_id in ("seen", "unseen"):
            topic = f"projects/{PROJECT}/topics/{topic_id}"
            ok(call(emu.host, "PUT", f"/v1/{topic}", {}, emu.admin))
            ok(call(emu.host, "PUT", f"/v1/projects/{PROJECT}/subscriptions/{topic_id}-sub",
                    {"topic": topic}, emu.admin))
        ok(call(emu.host, "PUT", "/v1/projects/console-other/topics/elsewhere", {}, emu.admin))
        ok(call(emu.host, "POST", f"/v1/projects/{PROJECT}/topics/seen:setIamPolicy",
                {"policy": {"bindings": [{"role": "roles/pubsub.viewer",
                                          "members": [f"serviceAccount:{ONE}"]}]}}, emu.admin))
        yield emu


API_PATHS = ("/console/api/session", "/console/api/projects",
             f"/console/api/projects/{PROJECT}/overview",
             f"/console/api/projects/{PROJECT}/subscriptions/seen-sub:peek")


def test_under_auth_the_api_needs_a_credential_and_the_page_does_not(secured):
    for path in API_PATHS:
        answer = call(secured.host, "GET", path)
        assert answer.status_code == 401, path
        assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
        assert call(secured.host, "GET", path, token="not-a-token").status_code == 401
    assert requests.get(f"http://{secured.host}/console/", timeout=10).status_code == 200
    assert requests.get(f"http://{secured.host}/console/console.js", timeout=10).ok
    session = ok(call(secured.host, "GET", "/console/api/session", token=secured.one))
    assert session == {"auth": True, "email": ONE, "admin": False}


def test_under_auth_a_caller_sees_only_what_they_may(secured):
    host = secured.host
    everything = ok(call(host, "GET", "/console/api/projects", token=secured.admin))["projects"]
    assert [p["id"] for p in everything] == ["console-auth", "console-other"]
    mine = ok(call(host, "GET", "/console/api/projects", token=secured.one))["projects"]
    assert mine == [{"id": PROJECT, "topics": 1, "subscriptions": 0, "schemas": 0}]
    found = overview(host, PROJECT, secured.one)
    assert [t["topic"]["name"] for t in found["topics"]] == [f"projects/{PROJECT}/topics/seen"]
    assert found["subscriptions"] == []
    assert overview(host, "console-other", secured.one)["topics"] == []
    assert len(overview(host, PROJECT, secured.admin)["subscriptions"]) == 2
    peek = call(host, "GET", f"/console/api/projects/{PROJECT}/subscriptions/seen-sub:peek",
                token=secured.one)
    assert peek.status_code == 403  # viewing is not consuming
    missing = call(host, "GET", f"/console/api/projects/{PROJECT}/subscriptions/no-sub:peek",
                   token=secured.one)
    assert missing.status_code == 403  # permission first: existence does not leak
    admin_missing = call(host, "GET",
                         f"/console/api/projects/{PROJECT}/subscriptions/no-sub:peek",
                         token=secured.admin)
    assert admin_missing.status_code == 404


@needs_chromium
def test_under_auth_the_page_signs_in_with_a_key_and_shows_only_what_it_may(secured, tmp_path):
    browser = Browser(tmp_path)
    try:
        browser.open(f"http://{secured.host}/console/")
        browser.find("#key-input")
        browser.until(lambda: browser.find("#sign-in").is_displayed(), "the sign-in form")
        browser.shot("sign-in")
        key = secured.one_key.read_text()
        browser.driver.execute_script(  # (send_keys would type the long key key by key)
            "document.getElementById('key-input').value = arguments[0];", key)
        browser.click("#sign-in-button")
        browser.until(lambda: browser.text("#who") == ONE, "the caller's email in the header")
        browser.open(f"http://{secured.host}/console/#/projects/{PROJECT}")
        seen = f'tr[data-name="projects/{PROJECT}/topics/seen"]'
        browser.find(seen)
        browser.until(lambda: "No subscriptions you may see." in browser.text("main"),
                      "the empty subscription list")
        assert not browser.driver.find_elements(
            "css selector", f'tr[data-name="projects/{PROJECT}/topics/unseen"]')
        browser.shot("project-as-one")
    finally:
        browser.close()
