"""The pipeline end to end: real Kafka, real SMTP servers, the real worker.

Each test has its own topics and consumer group, so tests do not see each other's
requests. Every wait is bounded.
"""

import base64
import collections
import datetime
import re
import signal
import time

import pytest

from harness import (Worker, final_by_id, make_request, make_requests, parse_logfmt,
                     wait_for)

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]

PASSWORD = "s3cret-Pa55-word"


def parse_ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


def varied_request(i):
    """Request i of a mix: cc/bcc, HTML, non-ASCII, attachments, custom headers."""
    req = make_request(i, id=f"mix-{i:05d}", to=[f"User {i} <user{i}@example.com>"],
                       subject=f"Order {i} confirmed",
                       metadata={"order": i})
    if i % 3 == 0:
        req["html"] = f"<p>Hello <b>{i}</b></p>"
    if i % 4 == 0:
        req["cc"] = [f"cc{i}@example.org"]
    if i % 5 == 0:
        req["bcc"] = [f"audit{i}@example.net"]
    if i % 7 == 0:
        req["subject"] = f"Grüße {i} — ½ price"
        req["from"] = "Café Zoë <no-reply@shop.example>"
    if i % 11 == 0:
        req["attachments"] = [{"filename": f"receipt-{i}.txt",
                               "content_type": "text/plain",
                               "content_base64": base64.b64encode(
                                   f"receipt {i}\n".encode()).decode()}]
    if i % 13 == 0:
        req["headers"] = {"X-Campaign": f"fall-{i}"}
        req["reply_to"] = "help@shop.example"
    return req


# Words of several scripts and widths (1 to 4 bytes a character in UTF-8), mixed the way
# order and shipping notices mix them.
WORDS = ["Заказ", "отправлен", "номер", "доставка", "Grüße", "½", "price", "naïve",
         "日本語", "件名", "ご注文ありがとうございます", "Ωmega", "καλημέρα", "🎉", "📦🚚",
         "a", "é", "[Магазин]", "—", "Zoë", "Café", "😀x😀", "שלום", "مرحبا", "x=?y",
         "under_score", "long" * 12, "Ünïcödé", "Ж", "ёлка", "中文测试"]


def unicode_request(i, rng):
    n = rng.randint(1, 14)
    subject = " ".join(rng.choice(WORDS) for _ in range(n))
    name = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    to_name = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return make_request(i, id=f"uni-{i:04d}", subject=subject,
                        to=[f"{to_name} <user{i}@example.com>"],
                        **{"from": f"{name} <shop@example.com>"})


def gmime_parse(raw):
    """(subject, from display name, to display name) as GMime 3 reads them."""
    import gi
    gi.require_version("GMime", "3.0")
    from gi.repository import GMime
    GMime.init()
    parser = GMime.Parser.new_with_stream(GMime.StreamMem.new_with_buffer(raw))
    m = parser.construct_message(None)
    return (m.get_subject(), m.get_from().get_address(0).get_name(),
            m.get_to().get_address(0).get_name())


def python_name(raw, field):
    """The display name in header @field of @raw, decoded by email.header."""
    import email.header
    head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").decode("ascii")
    value = next(line.split(":", 1)[1] for line in head.split("\r\n")
                 if line.lower().startswith(field.decode().lower() + ":"))
    text = str(email.header.make_header(email.header.decode_header(value)))
    return text.rsplit(" <", 1)[0].strip()


def test_encoded_headers_read_the_same_in_gmime_and_python(
        kafka, topics, capture_server, worker):
    """300 requests with subjects and names in many scripts: GMime (3.2.13 on Debian 12,
    which stops decoding after a padded B word that is not the last of its header) and
    Python's parser both read back exactly what was asked for, and every header line
    that holds an encoded word is at most 76 characters (RFC 2047 section 2)."""
    import random
    rng = random.Random(2047)
    reqs = [unicode_request(i, rng) for i in range(300)]
    server = capture_server()
    kafka.produce(topics.requests, reqs)
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=300, timeout=120))
    assert {r["status"] for r in final.values()} == {"sent"}
    captured = {m.msg["Message-ID"]: m for m in server.wait_messages(300, timeout=60)}
    wrong = []
    for req in reqs:
        m = captured[final[req["id"]]["message_id"]]
        want = (req["subject"], req["from"].rsplit(" <", 1)[0],
                req["to"][0].rsplit(" <", 1)[0])
        # Python 3.11's address parser keeps the white space between two encoded
        # words of a display name (RFC 2047 section 6.2 drops it); its RFC 2047
        # decoder, email.header, reads names as the RFC says.
        python = (str(m.msg["Subject"]), python_name(m.raw, b"From"),
                  python_name(m.raw, b"To"))
        for parser, got in (("gmime", gmime_parse(m.raw)), ("python", python)):
            if got != want:
                wrong.append((req["id"], parser, got, want))
        head = m.raw.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if b"=?" in line:
                assert len(line) <= 76, (req["id"], line)
    assert not wrong, f"{len(wrong)} of 900 read differently, first: {wrong[:3]}"


def test_thousand_requests_over_four_partitions_are_sent_captured_and_committed(
        kafka, topics, capture_server, worker):
    server = capture_server()
    reqs = [varied_request(i) for i in range(1000)]
    kafka.produce(topics.requests, reqs)
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                              inflight_max=200, smtp_sessions_max=50))

    results = kafka.results(topics.results, wait=1000, timeout=180)
    final = final_by_id(results)
    assert len(final) == 1000
    assert {r["status"] for r in final.values()} == {"sent"}
    for r in final.values():
        assert r["v"] == 1
        assert r["attempts"] == 1
        assert r["smtp_code"] == 250
        assert r["source"]["topic"] == topics.requests
        assert r["relay"] == server.url
    assert {r["source"]["partition"] for r in final.values()} == {0, 1, 2, 3}

    captured = server.wait_messages(1000, timeout=60)
    assert len(captured) == 1000
    by_id = {}
    for m in captured:
        mid = m.msg["Message-ID"]
        by_id[mid] = m
    assert len(by_id) == 1000, "every message has its own Message-ID"
    for req in reqs:
        i = int(req["id"].split("-")[1])
        res = final[req["id"]]
        m = by_id[res["message_id"]]
        assert res["message_id"] == f"<{req['id']}@shop.example>"
        expected_rcpts = ([f"user{i}@example.com"] + req.get("cc", []) + req.get("bcc", []))
        assert m.rcpt_tos == expected_rcpts
        assert m.mail_from == "no-reply@shop.example"
        assert m.msg["Subject"] == req["subject"]
        assert m.msg["To"] == f"User {i} <user{i}@example.com>"
        assert "Bcc" not in m.msg
        for bcc in req.get("bcc", []):
            header_block = m.raw.split(b"\r\n\r\n", 1)[0]
            assert bcc.encode() not in header_block
        if "cc" in req:
            assert m.msg["Cc"] == req["cc"][0]
        if "reply_to" in req:
            assert m.msg["Reply-To"] == req["reply_to"]
        if "headers" in req:
            assert m.msg["X-Campaign"] == req["headers"]["X-Campaign"]
        assert str(m.msg["From"]) == req["from"].replace("<", "<", 1)
        text = m.msg.get_body(preferencelist=("plain",))
        assert text.get_content().replace("\r\n", "\n") == req["text"]
        if "html" in req:
            html = m.msg.get_body(preferencelist=("html",))
            assert html.get_content().strip() == req["html"]
        atts = list(m.msg.iter_attachments())
        if "attachments" in req:
            assert len(atts) == 1
            assert atts[0].get_filename() == req["attachments"][0]["filename"]
            assert atts[0].get_payload(decode=True) == base64.b64decode(
                req["attachments"][0]["content_base64"])
        else:
            assert atts == []
        for line in m.raw.split(b"\r\n"):
            assert len(line) <= 998
        assert res["metadata"] == {"order": i}

    kafka.wait_committed(topics.group, topics.requests, timeout=30)


def test_a_relay_offering_chunking_gets_every_message_once_with_bdat(
        kafka, topics, capture_server, worker):
    """smtp.chunking: against a relay that offers CHUNKING every message goes with BDAT,
    as built (lines that start with a dot, a body past the size copied behind the
    commands), once by Message-ID; a refused recipient fails its request at once and the
    session goes on; every offset is committed."""
    server = capture_server(reject_rcpt="refused", extra=["--chunking"])
    big = "".join(f".line {j} of a long body\n" if j % 5 == 0 else f"line {j}\n"
                  for j in range(3000))
    reqs = [varied_request(i) for i in range(300)]
    for i, req in enumerate(reqs):
        if i % 4 == 0:
            req["text"] = f".starts with a dot {i}\n..two dots\n.\nend\n"
        if i % 50 == 1:
            req["text"] = big
    refused = [make_request(i, id=f"refused-{i}", to=[f"refused{i}@example.com"])
               for i in range(20)]
    kafka.produce(topics.requests, reqs[:150] + refused + reqs[150:])
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                              inflight_max=100, smtp_sessions_max=10))

    final = final_by_id(kafka.results(topics.results, wait=320, timeout=180))
    assert len(final) == 320
    for req in refused:
        r = final[req["id"]]
        assert (r["status"], r["smtp_code"], r["attempts"]) == ("failed", 550, 1), r
    by_mid = {}
    for m in server.wait_messages(300, timeout=60):
        assert m.meta["bdat"] is True
        assert m.msg["Message-ID"] not in by_mid, m.msg["Message-ID"]
        by_mid[m.msg["Message-ID"]] = m
    assert len(by_mid) == 300
    for req in reqs:
        r = final[req["id"]]
        assert r["status"] == "sent" and r["attempts"] == 1, r
        m = by_mid[r["message_id"]]
        text = m.msg.get_body(preferencelist=("plain",))
        assert text.get_content().replace("\r\n", "\n") == req["text"], req["id"]
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


def test_starttls_and_auth_deliver_with_a_verified_certificate(
        kafka, topics, capture_server, worker):
    server = capture_server(tls=True, require_tls=True, auth=f"mailer:{PASSWORD}")
    kafka.produce(topics.requests, make_requests(20))
    w = worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="required",
                                  smtp_tls_ca_file=server.ca_file,
                                  smtp_username="mailer", smtp_password=PASSWORD))
    final = final_by_id(kafka.results(topics.results, wait=20, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    captured = server.wait_messages(20, timeout=30)
    assert all(m.meta["tls"] for m in captured)
    assert all(m.meta["auth_user"] == "mailer" for m in captured)
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    assert w.stop() == 0
    assert PASSWORD not in w.all_logs()


def test_untrusted_certificate_is_a_relay_error_not_a_failed_message(
        kafka, topics, capture_server, worker):
    server = capture_server(tls=True, require_tls=True)
    kafka.produce(topics.requests, make_requests(5))
    w = worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="required",
                                  smtp_relay_backoff_initial_ms=200,
                                  smtp_relay_backoff_max_ms=1000))
    w.wait_log("relay", timeout=30)
    wait_for(lambda: "certificate" in w.log(), 30, "a certificate error in the log")
    assert kafka.count(topics.results) == 0
    assert server.count() == 0


def test_wrong_password_backs_off_without_failing_mail_then_recovers(
        kafka, topics, capture_server, worker):
    from harness import free_port
    server = capture_server(tls=True, require_tls=True, auth=f"mailer:{PASSWORD}")
    kafka.produce(topics.requests, make_requests(20))
    port = free_port()
    cfg = Worker.base_config(kafka, topics, server.url, smtp_starttls="required",
                             smtp_tls_ca_file=server.ca_file, smtp_username="mailer",
                             smtp_password="wrong-" + PASSWORD,
                             smtp_relay_backoff_initial_ms=200,
                             smtp_relay_backoff_max_ms=1000,
                             metrics_listen=f"127.0.0.1:{port}")
    w = worker(cfg)
    w.wait_log("AUTH failed", timeout=30)
    time.sleep(4)
    log = w.log()
    warnings = [l for l in log.splitlines() if "AUTH failed" in l]
    tries = _scrape_metric(port, "kafka_mailer_relay_failures_total")
    # The first sessions, opened together for 20 requests, fail together; then backoff
    # from 200 ms doubling to 1 s: a handful of tries in ~5 s, not a busy loop; one
    # warning for them all (the next would come 30 s later).
    assert 2 <= tries <= 40, tries
    assert len(warnings) == 1, warnings
    assert server.url in warnings[0], "the error names the relay"
    assert "wrong-" + PASSWORD not in log
    # No burst of failed results: the mail waits for the relay.
    assert kafka.count(topics.results) == 0
    assert not kafka.fully_committed(topics.group, topics.requests)

    # SIGTERM does not hang on mail waiting for an unhealthy relay.
    t0 = time.monotonic()
    assert w.stop(timeout=40) == 0
    assert time.monotonic() - t0 < 35

    w.config["smtp.password"] = PASSWORD
    w.start()
    final = final_by_id(kafka.results(topics.results, wait=20, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    assert len(final) == 20
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


HOSTILE = [
    b'{"id": "broken-1", "from": ',                                   # malformed JSON
    b'not json at all',
    b'[1, 2, 3]',
    b'{"id": "no-from", "to": ["a@example.com"], "text": "x"}',
    b'{"id": "no-rcpt", "from": "a@example.com", "text": "x"}',
    b'{"id": "crlf-subject", "from": "a@example.com", "to": ["b@example.com"],'
    b' "subject": "hi\\r\\nBcc: victim@example.com", "text": "x"}',
    b'{"id": "crlf-rcpt", "from": "a@example.com",'
    b' "to": ["b@example.com>\\r\\nRCPT TO:<victim@example.com"], "text": "x"}',
    b'{"id": "owned-header", "from": "a@example.com", "to": ["b@example.com"],'
    b' "headers": {"Message-ID": "<x@y>"}, "text": "x"}',
    b'{"id": "bad-header-name", "from": "a@example.com", "to": ["b@example.com"],'
    b' "headers": {"X Bad": "v"}, "text": "x"}',
    b'{"id": "bad-addr", "from": "a@example.com", "to": ["not an address"], "text": "x"}',
    b'{"id": "unknown-field", "from": "a@example.com", "to": ["b@example.com"],'
    b' "text": "x", "colour": "red"}',
    b'{"id": "bad-base64", "from": "a@example.com", "to": ["b@example.com"], "text": "x",'
    b' "attachments": [{"filename": "a.bin", "content_base64": "!!!"}]}',
]


def test_invalid_requests_are_rejected_dead_lettered_and_do_not_stop_valid_ones(
        kafka, topics, capture_server, worker):
    server = capture_server()
    valid = make_requests(50)
    kafka.produce(topics.requests, valid[:25])
    kafka.produce(topics.requests, HOSTILE, "--raw")
    kafka.produce(topics.requests, valid[25:])
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off"))

    total = len(valid) + len(HOSTILE)
    results = wait_for(lambda: (lambda r: r if len(r) >= total else None)(
        kafka.results(topics.results, timeout=10, check=False)), 60, "every result")
    rejected = [r for r in results if r["status"] == "rejected"]
    sent = final_by_id(r for r in results if r["status"] == "sent")
    assert len(rejected) == len(HOSTILE)
    assert set(sent) == {r["id"] for r in valid}
    reasons = {r["id"]: r["error"] for r in rejected if r["id"]}
    assert "subject" in reasons["crlf-subject"]
    assert "to[0]" in reasons["crlf-rcpt"]
    assert "headers" in reasons["owned-header"]
    assert "colour" in reasons["unknown-field"]
    assert all(r["error"] for r in rejected)
    assert kafka.count(topics.deadletter) == len(HOSTILE)
    # Nothing injected reached the server.
    captured = server.wait_messages(len(valid), timeout=30)
    assert len(captured) == len(valid)
    assert all("victim@example.com" not in m.rcpt_tos for m in captured)
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


def test_log_lines_are_logfmt_whatever_the_ids_and_replies_hold(
        kafka, topics, capture_server, worker):
    """Ids with quotes, backslashes, a tab and spaces (rejected), one with '=' (sent),
    rejection reasons and SMTP replies with spaces, at log.level=debug: every line
    parses as logfmt (the worker fixture checks that for every test) and the fields
    read back are the values the worker logged, control characters shown as '?'."""
    server = capture_server(tempfail_first=1)
    odd = ['say "hi"', "back\\slash", "tab\there", 'a "b" c']
    kafka.produce(topics.requests, [make_request(i, id=rid) for i, rid in enumerate(odd)])
    kafka.produce(topics.requests, [make_request(9, id="k=v")])
    w = worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                                  log_level="debug", retry_backoff_initial_ms=100,
                                  retry_backoff_max_ms=200))
    final = final_by_id(kafka.results(topics.results, wait=5, timeout=60))
    assert final["k=v"]["status"] == "sent" and final["k=v"]["attempts"] == 2
    w.stop()
    lines = [parse_logfmt(line) for line in w.log().splitlines()]
    rejected = {f["id"]: f["reason"] for f in lines if f["msg"] == "request rejected"}
    assert set(rejected) == {'say "hi"', "back\\slash", "tab?here", 'a "b" c'}, rejected
    assert rejected["back\\slash"] == "id: invalid character '\\'"
    retried = [f for f in lines if f["msg"] == "retrying"]
    assert [(f["id"], f["code"]) for f in retried] == [("k=v", "451")], retried
    assert retried[0]["reply"].startswith("4.3.0 Temporary failure")
    assert {f["level"] for f in lines} <= {"debug", "info", "warn", "error"}
    assert any(f["msg"] == "stopped" for f in lines)


def test_permanent_rejection_after_data_gives_failed_without_retry(
        kafka, topics, smtp_sink, worker):
    sink = smtp_sink(extra=["-f", "."])
    kafka.produce(topics.requests, make_requests(10))
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              retry_backoff_initial_ms=50))
    final = final_by_id(kafka.results(topics.results, wait=10, timeout=60))
    assert {r["status"] for r in final.values()} == {"failed"}
    for r in final.values():
        assert 500 <= r["smtp_code"] <= 599
        assert r["attempts"] == 1
        assert r["smtp_reply"]
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


def test_temporary_failure_is_retried_and_then_sent(
        kafka, topics, capture_server, worker):
    server = capture_server(tempfail_first=6)
    reqs = make_requests(6)
    kafka.produce(topics.requests, reqs)
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                              retry_backoff_initial_ms=100, retry_backoff_max_ms=400))
    final = final_by_id(kafka.results(topics.results, wait=6, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    # Every transaction the server refused was retried: 6 refusals + 6 successes.
    assert sum(r["attempts"] for r in final.values()) == 12
    assert max(r["attempts"] for r in final.values()) > 1
    assert len(server.wait_messages(6, timeout=30)) == 6


def test_retries_are_bounded_by_the_attempt_limit(kafka, topics, smtp_sink, worker):
    sink = smtp_sink(extra=["-r", "RCPT"])
    kafka.produce(topics.requests, make_requests(3))
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              retry_attempts_max=3, retry_backoff_initial_ms=50,
                              retry_backoff_max_ms=100))
    final = final_by_id(kafka.results(topics.results, wait=3, timeout=60))
    for r in final.values():
        assert r["status"] == "failed"
        assert r["attempts"] == 3
        assert 400 <= r["smtp_code"] <= 499
        assert "retries exhausted" in r["error"]


def test_a_slow_final_reply_does_not_serialise_sends(kafka, topics, smtp_sink, worker):
    sink = smtp_sink(extra=["-W", ".:1"])
    kafka.produce(topics.requests, make_requests(200))
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              inflight_max=200, smtp_sessions_max=200))
    final = final_by_id(kafka.results(topics.results, wait=200, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    first = min(parse_ts(r["received_at"]) for r in final.values())
    last = max(parse_ts(r["completed_at"]) for r in final.values())
    # Serialised, 200 replies delayed 1 s each would take 200 s.
    assert (last - first).total_seconds() < 10


def test_sessions_closed_when_idle_give_back_their_libcurl_multi_handles(
        kafka, topics, smtp_sink, worker):
    # Sessions are spread over libcurl multi handles of 32, and each multi
    # handle holds a socket pair. When the sessions of a burst have closed,
    # all but one spare multi handle go: the worker's descriptors fall back.
    import os
    from harness import free_port
    sink = smtp_sink(extra=["-W", ".:1"])
    port = free_port()
    w = worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                                  inflight_max=160, smtp_sessions_max=160,
                                  smtp_session_idle_ms=300,
                                  metrics_listen=f"127.0.0.1:{port}"))

    def fds():
        return len(os.listdir(f"/proc/{w.pid}/fd"))

    def sessions():
        try:
            return _scrape_metric(port, "kafka_mailer_smtp_sessions")
        except OSError:
            return None

    # A few requests first, so that every Kafka connection is open.
    kafka.produce(topics.requests, make_requests(5))
    kafka.results(topics.results, wait=5, timeout=60)
    wait_for(lambda: sessions() == 0, 30, "the first sessions closing")
    before = fds()
    kafka.produce(topics.requests, [make_request(i) for i in range(5, 165)])
    # More than four multi handles' worth of sessions, with their sockets.
    during = wait_for(lambda: fds() > before + 128 and fds(), 30,
                      "more than 128 sessions' sockets")
    final = final_by_id(kafka.results(topics.results, wait=165, timeout=90))
    assert {r["status"] for r in final.values()} == {"sent"}
    wait_for(lambda: sessions() == 0, 30, "the burst's sessions closing")
    # The sessions' sockets and the multi handles' socket pairs are gone
    # (one spare multi handle may stay, as it may before the burst).
    after = wait_for(lambda: fds() <= before + 2 and fds(), 10,
                     "descriptors back near %d (during the burst %d)" % (before, during))
    assert after <= before + 2


def test_a_larger_kafka_message_max_bytes_raises_the_consumers_fetch_limit(
        kafka, topics, smtp_sink, worker):
    # librdkafka refuses a consumer whose fetch.max.bytes (the worker's
    # default: 1 MiB) is below message.max.bytes, which kafka.* gives to
    # both clients.
    sink = smtp_sink()
    kafka.produce(topics.requests, make_requests(20))
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              kafka_message_max_bytes=5000000))
    final = final_by_id(kafka.results(topics.results, wait=20, timeout=60))
    assert len(final) == 20
    assert {r["status"] for r in final.values()} == {"sent"}


def test_a_request_larger_than_a_fetch_is_consumed_and_sent(
        kafka, topics, capture_server, worker):
    # The consumer fetches at most 64 KiB at a time; Kafka still hands over
    # a larger record batch whole.
    import os
    server = capture_server()
    blob = os.urandom(600 * 1024)
    big = make_request(0, attachments=[{
        "filename": "big.bin", "content_type": "application/octet-stream",
        "content_base64": base64.b64encode(blob).decode()}])
    kafka.produce(topics.requests, [big] + make_requests(5))
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=6, timeout=90))
    assert {r["status"] for r in final.values()} == {"sent"}
    captured = server.wait_messages(6, timeout=60)
    sizes = sorted(len(part.get_content()) for m in captured
                   for part in m.msg.iter_attachments())
    assert sizes == [len(blob)]


def test_admin_offsets_wait_returns_when_the_group_has_caught_up(
        kafka, topics, smtp_sink, worker):
    sink = smtp_sink()
    kafka.produce(topics.requests, make_requests(30))
    # Nothing committed yet: after the wait, exit 3 with the lag.
    t0 = time.time()
    cp = kafka.admin("offsets", topics.group, topics.requests, "--wait", "0.5")
    assert cp.returncode == 3
    assert time.time() - t0 >= 0.5
    assert "total partitions=4 end=30 lag=30" in cp.stdout
    assert "caught_up_ms" not in cp.stdout
    assert kafka.admin("offsets", topics.group, topics.requests, "--wait",
                       "0").returncode == 1
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off"))
    cp = kafka.admin("offsets", topics.group, topics.requests, "--wait", "60",
                     timeout=90)
    assert cp.returncode == 0, cp.stderr
    assert "lag=0 lagging=0" in cp.stdout
    caught = int(re.search(r"caught_up_ms=(\d+)", cp.stdout).group(1)) / 1000
    assert t0 < caught <= time.time()
    final = final_by_id(kafka.results(topics.results, wait=30, timeout=60))
    assert len(final) == 30
    # Every result was published before its offset was committed.
    assert max(parse_ts(r["completed_at"]).timestamp()
               for r in final.values()) <= caught


def test_an_idle_worker_commits_at_once_not_at_the_commit_interval(
        kafka, topics, smtp_sink, worker):
    sink = smtp_sink()
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              commit_interval_ms=120000))
    kafka.produce(topics.requests, make_requests(10))
    # The interval is two minutes; the last send leaves the worker idle,
    # which commits.
    cp = kafka.admin("offsets", topics.group, topics.requests, "--wait", "30",
                     timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "end=10 lag=0" in cp.stdout


def test_expired_deadline_is_not_sent(kafka, topics, capture_server, worker):
    server = capture_server()
    kafka.produce(topics.requests, [
        make_request(0, id="late", deadline="2020-01-01T00:00:00Z"),
        make_request(1, id="on-time", deadline="2100-01-01T00:00:00Z"),
    ])
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=2, timeout=60))
    assert final["late"]["status"] == "expired"
    assert final["late"]["attempts"] == 0
    assert final["on-time"]["status"] == "sent"
    assert [m.msg["Message-ID"] for m in server.wait_messages(1)] == ["<on-time@shop.example>"]
    time.sleep(0.5)
    assert server.count() == 1


def test_two_workers_share_partitions_and_a_sigterm_and_restart_lose_nothing(
        kafka, topics, capture_server, worker):
    server = capture_server(delay_data=0.05)
    n = 1500
    reqs = make_requests(n)
    cfg = Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                             inflight_max=50, smtp_sessions_max=25)
    w1 = worker(cfg, name="w1")
    w2 = worker(cfg, name="w2")
    # Both own partitions before the load starts: a cooperative rebalance
    # first assigns the newcomer nothing, and on a busy machine the second
    # round came after a worker had sent everything.
    owns = re.compile(r'partitions assigned" topic=' + re.escape(topics.requests) +
                      r" count=[1-9]")
    wait_for(lambda: owns.search(w1.log()) and owns.search(w2.log()), 60,
             "both workers own partitions of the requests topic")
    kafka.produce(topics.requests, reqs)

    # Mid-load: some results are in, many are not.
    wait_for(lambda: kafka.count(topics.results) >= 200, 60, "200 results")
    assert kafka.count(topics.results) < n
    rc = w1.stop(timeout=60)
    if rc != 0:
        # librdkafka before 2.3 may abort when the consumer is destroyed, in its
        # cooperative-sticky assignor (librdkafka issue 4312; docs/operations.md, "Exit on
        # librdkafka before 2.3"): allowed there only, and only after the revoke. What
        # follows shows that nothing was lost.
        version = re.search(r"librdkafka=(\d+)\.(\d+)", w1.log())
        assert version and (int(version[1]), int(version[2])) < (2, 3), w1.log_tail()
        assert rc == -signal.SIGABRT, w1.log_tail()
        assert "rd_kafka_sticky_assignor_state_destroy" in w1.log_tail(), w1.log_tail()
        assert "partitions revoked" in w1.log(), w1.log_tail()
    else:
        assert "stopped" in w1.log()
    w1.start()

    final = final_by_id(kafka.results(topics.results, wait=n, timeout=180))
    assert set(final) == {r["id"] for r in reqs}, "every request has a final result"
    assert {r["status"] for r in final.values()} == {"sent"}
    workers = {r["worker"] for r in final.values()}
    assert len(workers) >= 2, "both workers took part"
    kafka.wait_committed(topics.group, topics.requests, timeout=60)
    captured_ids = {m.msg["Message-ID"] for m in server.messages()}
    assert captured_ids == {f"<{r['id']}@shop.example>" for r in reqs}


def test_sigterm_drains_in_flight_sends_before_exiting(kafka, topics, smtp_sink, worker):
    sink = smtp_sink(extra=["-W", ".:2"])
    kafka.produce(topics.requests, make_requests(30))
    w = worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                                  inflight_max=30, smtp_sessions_max=30))
    wait_for(lambda: re.search(r"smtp session connected|partitions assigned", w.log()),
             30, "the worker to start sending")
    time.sleep(1.0)  # every send is now waiting for its delayed final reply
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0
    # Sends in progress at SIGTERM finished and were published and committed.
    final = final_by_id(kafka.results(topics.results, timeout=10, check=False))
    assert len(final) == 30
    assert {r["status"] for r in final.values()} == {"sent"}
    assert kafka.fully_committed(topics.group, topics.requests)


def test_second_signal_exits_at_once(kafka, topics, smtp_sink, worker):
    sink = smtp_sink(extra=["-W", ".:5"])
    kafka.produce(topics.requests, make_requests(10))
    w = worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off"))
    w.wait_log("partitions assigned")
    time.sleep(1.0)
    w.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    t0 = time.monotonic()
    w.send_signal(signal.SIGTERM)
    assert w.wait(5) == 130
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("arg, named", [
    ("smpt.url=smtp://x", "smpt.url"),
    ("inflight.max=0", "inflight.max"),
    ("smtp.starttls=maybe", "smtp.starttls"),
    ("kafka.no.such.property=1", "no.such.property"),
])
def test_bad_configuration_stops_start_up_naming_the_key(arg, named):
    from harness import binary, run
    r = run([binary("kafka-mailer"), "-X", arg], timeout=30, check=False)
    assert r.returncode != 0
    assert named in r.stderr


def test_help_lists_every_setting_with_its_default():
    from harness import binary, run
    r = run([binary("kafka-mailer"), "--help"], timeout=30, check=True)
    for key in ("inflight.max", "smtp.url", "retry.attempts.max", "shutdown.timeout.ms",
                "rebalance.drain.timeout.ms", "smtp.password"):
        assert key in r.stdout
    assert "email.requests" in r.stdout


def test_a_repeated_request_id_is_sent_once_and_reported_twice(
        kafka, topics, capture_server, worker):
    server = capture_server(delay_data=0.3)
    first = make_request(0, id="twice")
    kafka.produce(topics.requests, [first, dict(first), make_request(1, id="once")])
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off"))
    results = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(
        kafka.results(topics.results, timeout=10, check=False)), 60, "three results")
    twice = [r for r in results if r["id"] == "twice"]
    assert len(twice) == 2
    assert {r["status"] for r in twice} == {"sent"}
    dup = [r for r in twice if r.get("duplicate")]
    assert len(dup) == 1 and dup[0]["attempts"] == 0
    orig = [r for r in twice if not r.get("duplicate")][0]
    assert dup[0]["duplicate_of"]["offset"] == orig["source"]["offset"]
    assert dup[0]["message_id"] == orig["message_id"]
    server.wait_messages(2, timeout=30)
    time.sleep(1.0)
    ids = [m.msg["Message-ID"] for m in server.messages()]
    assert sorted(ids) == ["<once@shop.example>", "<twice@shop.example>"]
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


def test_a_long_temporary_failure_moves_through_the_retry_topic_and_main_commits_go_on(
        kafka, topics, capture_server, worker):
    server = capture_server(tempfail_first=12)
    reqs = make_requests(4)
    kafka.produce(topics.requests, reqs)
    w = worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                                  retry_local_window_ms=300, retry_backoff_initial_ms=100,
                                  retry_backoff_max_ms=300, retry_attempts_max=20))
    # The main partitions commit although no request is sent yet.
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    final = final_by_id(kafka.results(topics.results, wait=4, timeout=90))
    assert {r["status"] for r in final.values()} == {"sent"}
    assert sum(r["attempts"] for r in final.values()) == 4 + 12
    assert kafka.count(topics.retry) > 0
    for r in final.values():
        assert r["source"]["topic"] == topics.requests
    assert {r["source"]["offset"] for r in final.values()} <= set(range(4))
    assert len(server.wait_messages(4, timeout=30)) == 4
    assert w.alive()


def test_metrics_endpoint_counts_results_and_reports_health(
        kafka, topics, capture_server, worker):
    import urllib.request
    from harness import free_port
    server = capture_server()
    port = free_port()
    first = make_request(0, id="m-dup")
    kafka.produce(topics.requests, make_requests(10) + [first, dict(first)])
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                              metrics_listen=f"127.0.0.1:{port}"))
    kafka.results(topics.results, wait=11, timeout=60)

    def metric(text, name):
        m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
            return r.read().decode()
    # The repeated request is counted as a duplicate, not as a second send.
    text = wait_for(lambda: (lambda t: t if metric(
        t, 'kafka_mailer_results_total{status="sent"}') == 11 else None)(scrape()),
        30, "11 sent in /metrics")
    assert metric(text, "kafka_mailer_duplicates_total") == 1
    assert metric(text, "kafka_mailer_requests_consumed_total") == 12
    assert metric(text, 'kafka_mailer_inflight{topic="requests"}') == 0
    assert metric(text, "kafka_mailer_relay_healthy") == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200


def _scrape_metric(port, name):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_outcome_unknown_counts_sends_whose_reply_has_not_come(
        kafka, topics, capture_server, worker):
    """kafka_mailer_outcome_unknown: the sends a crash now could repeat. While the relay
    holds its replies to the final dots, each of those sends counts; once their results
    are stored in Kafka, none does."""
    from harness import free_port
    server = capture_server(delay_data=4)
    port = free_port()
    worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                              smtp_sessions_max=10, metrics_listen=f"127.0.0.1:{port}"))
    wait_for(lambda: _metric_when_up(port, "kafka_mailer_outcome_unknown") == 0, 30,
             "/metrics up")
    kafka.produce(topics.requests, make_requests(3))
    wait_for(lambda: server_busy(server, port, 3), 20, "3 sends waiting for their reply")
    kafka.results(topics.results, wait=3, timeout=60)
    wait_for(lambda: _scrape_metric(port, "kafka_mailer_outcome_unknown") == 0, 20,
             "no unknown outcome once the results are stored")


@pytest.mark.parametrize("timeout_ms", [1, 0])
def test_a_results_read_cut_short_or_off_lets_the_partitions_go_ahead(
        kafka, topics, capture_server, worker, timeout_ms):
    """dedupe.recall.timeout.ms: at 1 ms the read at assignment cannot finish; the
    partitions go ahead anyway (a warning and kafka_mailer_recall_incomplete_total say
    so) and every request is sent and committed. At 0 there is no read at all."""
    from harness import free_port
    server = capture_server()
    port = free_port()
    n = 200
    kafka.produce(topics.requests, make_requests(n))
    w = worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                                  dedupe_recall_timeout_ms=timeout_ms,
                                  metrics_listen=f"127.0.0.1:{port}"))
    a = kafka.wait_audit(topics, n, capture_dir=server.dir, timeout=60)
    assert a["status"]["sent"] == n and a["capture"]["duplicate_sends"] == 0, a
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    incomplete = _metric_when_up(port, "kafka_mailer_recall_incomplete_total")
    if timeout_ms:
        assert "results topic not fully read at assignment" in w.log(), w.log_tail()
        assert incomplete >= 1
    else:
        assert "results read at assignment" not in w.log(), w.log_tail()
        assert incomplete == 0


def _metric_when_up(port, name):
    """_scrape_metric(), or None while the endpoint does not answer yet."""
    import urllib.error
    try:
        return _scrape_metric(port, name)
    except (urllib.error.URLError, ConnectionError):
        return None


def server_busy(server, port, n):
    """The worker counts @n unknown outcomes while the server has stored none yet."""
    return server.count() == 0 and _scrape_metric(port, "kafka_mailer_outcome_unknown") == n


@pytest.mark.parametrize("nudge_ms", [20, 0, -1])
def test_a_dry_prefetch_queue_nudges_the_fetcher_unless_disabled(
        kafka, topics, smtp_sink, worker, nudge_ms):
    # With a 16 KiB prefetch queue librdkafka 2.0.2 stops fetching all the
    # time; fetch.nudge.ms wakes it, 0 leaves it to its own second. -1 (the
    # default) nudges only on a librdkafka without fetch.queue.backoff.ms
    # (before 2.2), which the worker sets low instead.
    from harness import free_port, librdkafka_version
    sink = smtp_sink()
    port = free_port()
    import secrets
    # 2 MB that compress little, in 20 producer batches (Kafka returns a
    # batch whole, whatever the fetch size): many fetches.
    for k in range(20):
        kafka.produce(topics.requests, [make_request(i, text=secrets.token_hex(1000))
                                        for i in range(50 * k, 50 * k + 50)])
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              fetch_nudge_ms=nudge_ms,
                              metrics_listen=f"127.0.0.1:{port}",
                              **{"kafka.consumer.queued.max.messages.kbytes": 16}))
    final = final_by_id(kafka.results(topics.results, wait=1000, timeout=240))
    assert {r["status"] for r in final.values()} == {"sent"}
    nudges = _scrape_metric(port, 'kafka_mailer_fetch_nudges_total{topic="requests"}')
    if nudge_ms < 0:
        nudge_ms = 50 if librdkafka_version() < (2, 2, 0) else 0
    if nudge_ms:
        assert nudges > 0
    else:
        assert nudges == 0


def test_what_a_worker_holds_never_exceeds_the_in_flight_limit(
        kafka, topics, smtp_sink, worker):
    # Held = consumed and not covered by a confirmed commit: what a crash
    # would send again. It must stay within inflight.max, also with the
    # default inflight.resume.percent of 100.
    from harness import free_port
    sink = smtp_sink(extra=["-W", ".:1"])
    port = free_port()
    kafka.produce(topics.requests, make_requests(300))
    worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                              inflight_max=20, smtp_sessions_max=20,
                              metrics_listen=f"127.0.0.1:{port}"))
    most = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            held = _scrape_metric(port, 'kafka_mailer_held{topic="requests"}')
        except OSError:
            held = None
        if held is not None:
            most = max(most, held)
        if kafka.admin("offsets", topics.group, topics.requests).returncode == 0:
            break
        time.sleep(0.02)
    assert kafka.admin("offsets", topics.group, topics.requests).returncode == 0
    assert 0 < most <= 20


def test_a_deadline_passing_while_the_relay_is_down_gives_expired(kafka, topics, worker):
    from harness import free_port
    dead_port = free_port()  # nothing listens: every session set-up fails
    deadline = (datetime.datetime.utcnow() + datetime.timedelta(seconds=3)
                ).strftime("%Y-%m-%dT%H:%M:%SZ")
    kafka.produce(topics.requests, [make_request(0, id="soon", deadline=deadline)])
    w = worker(Worker.base_config(kafka, topics, f"smtp://127.0.0.1:{dead_port}",
                                  smtp_starttls="off", smtp_relay_backoff_initial_ms=200,
                                  smtp_relay_backoff_max_ms=500))
    final = final_by_id(kafka.results(topics.results, wait=1, timeout=30))
    assert final["soon"]["status"] == "expired"
    assert final["soon"]["attempts"] == 0
    assert "deadline" in final["soon"]["error"]
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    assert "relay" in w.log()


def test_a_dead_letter_copy_too_large_for_its_topic_is_cut_and_the_pipeline_goes_on(
        kafka, capture_server, worker):
    from harness import Topics
    topics = Topics.new(partitions=2)
    kafka.create_topics(f"{topics.requests}:2", f"{topics.results}:2",
                        f"{topics.deadletter}:1,max.message.bytes=100000",
                        f"{topics.retry}:2")
    server = capture_server()
    noise = base64.b64encode(__import__("os").urandom(225000)).decode()  # incompressible
    big_bad = make_request(0, id="big-bad", subject="bad\r\nsubject", text=noise)
    kafka.produce(topics.requests, [big_bad] + make_requests(5))
    w = worker(Worker.base_config(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=6, timeout=60))
    assert final["big-bad"]["status"] == "rejected"
    assert [r["status"] for k, r in final.items() if k != "big-bad"] == ["sent"] * 5
    wait_for(lambda: kafka.count(topics.deadletter) == 1, 30, "the cut dead-letter copy")
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    assert "dead-letter copy too large" in w.log()


def test_smtps_with_implicit_tls_and_auth_delivers(kafka, topics, capture_server, worker):
    server = capture_server(tls=True, auth=f"mailer:{PASSWORD}", extra=["--implicit-tls"])
    kafka.produce(topics.requests, make_requests(5))
    url = f"smtps://127.0.0.1:{server.port}"
    w = worker(Worker.base_config(kafka, topics, url, smtp_tls_ca_file=server.ca_file,
                                  smtp_username="mailer", smtp_password=PASSWORD))
    final = final_by_id(kafka.results(topics.results, wait=5, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    assert {r["relay"] for r in final.values()} == {url}
    assert all(m.meta["auth_user"] == "mailer" for m in server.wait_messages(5))
    assert PASSWORD not in w.log()


def test_a_relay_answering_ahead_of_the_final_dot_loses_nothing(
        request, kafka, topics, smtp_sink, worker):
    # smtp-sink -W .:1 delays the reply to "." by a second but answers the
    # commands written after it at once: the MAIL, RCPT and DATA of the next
    # message, pipelined behind the "." (smtp.pipelining.transactions),
    # come back before the "."'s reply. The worker sees a 354 where the last
    # RCPT reply was due after replies that were all successes: those were
    # the next message's own replies, one step early. It reads them so,
    # sends that message, takes both final replies in order, and pipelines
    # nothing more behind a "." to that relay. Every request is sent once,
    # counted at the sink by Message-ID, none retried.
    import os
    import shutil
    import tempfile
    # smtp-sink runs as nobody when the tests run as root: its dump folder
    # must be reachable by it (the run's folders are not)
    dump = tempfile.mkdtemp(prefix="km-sink-dump-")
    os.chmod(dump, 0o777)
    request.addfinalizer(lambda: shutil.rmtree(dump, ignore_errors=True))
    sink = smtp_sink(extra=["-W", ".:1", "-d", f"{dump}/%H%M%S."])
    sessions = 4
    reqs = make_requests(40)
    kafka.produce(topics.requests, reqs)
    w = worker(Worker.base_config(kafka, topics, sink.url, smtp_starttls="off",
                                  smtp_sessions_max=sessions, inflight_max=40,
                                  retry_backoff_initial_ms=100,
                                  retry_backoff_max_ms=200))
    final = final_by_id(kafka.results(topics.results, wait=40, timeout=120))
    assert {r["status"] for r in final.values()} == {"sent"}
    assert set(final) == {r["id"] for r in reqs}

    def sink_ids():
        ids = collections.Counter()
        for name in os.listdir(dump):
            with open(os.path.join(dump, name), "rb") as f:
                for m in re.finditer(rb"^Message-ID: *(<[^>\r\n]*>)", f.read(),
                                     re.M | re.I):
                    ids[m.group(1).decode()] += 1
        return ids

    want = {r["message_id"] for r in final.values()}
    ids = wait_for(lambda: want <= set(sink_ids()) and sink_ids(), 10,
                   "every Message-ID at the sink")
    assert max(ids.values()) == 1, ids.most_common(5)
    assert all(r["attempts"] == 1 for r in final.values())
    warned = [line for line in w.log().splitlines()
              if "answers pipelined commands out of order" in line]
    assert len(warned) == 1 and "replies=realigned" in warned[0], warned
