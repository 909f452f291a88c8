"""Attack surface end to end: TLS version floor, SMTPUTF8, limits, secrets.

Real Kafka, real SMTP servers (capture-server, Postfix's smtp-sink), the real worker.
Each test has its own topics and group; every wait is bounded.
"""

import base64
import json
import os
import time
from pathlib import Path

import pytest

from harness import (Worker, binary, captured_mids, final_by_id, make_request,
                     make_requests, run, wait_for)

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]

# Distinctive, so a grep cannot match anything else.
SECRET = "Zq7-pw-4f1e9c2b-NEVER-PRINT"
WRONG_SECRET = "Xk3-pw-77aa01d5-ALSO-SECRET"


def cfg(kafka, topics, url, **more):
    return Worker.base_config(kafka, topics, url, smtp_relay_backoff_initial_ms=200,
                              smtp_relay_backoff_max_ms=1000, **more)


# --- TLS ------------------------------------------------------------------------------

def test_tls_min_version_1_3_refuses_a_tls_1_2_relay_as_a_relay_error_and_1_2_sends(
        kafka, topics, capture_server, worker):
    server = capture_server(tls=True, require_tls=True, extra=["--tls-max", "1.2"])
    kafka.produce(topics.requests, make_requests(5))
    w = worker(cfg(kafka, topics, server.url, smtp_tls_ca_file=server.ca_file,
                   smtp_tls_min_version="1.3"))
    w.wait_log("relay unhealthy", timeout=30)
    time.sleep(2)
    unhealthy = [l for l in w.log().splitlines() if "relay unhealthy" in l]
    assert server.url in unhealthy[0], unhealthy[0]
    assert "TLS" in unhealthy[0] or "SSL" in unhealthy[0], unhealthy[0]
    # A relay problem: the mail waits, no result (certainly no `failed`), nothing sent.
    assert kafka.count(topics.results) == 0
    assert server.count() == 0
    assert w.stop() == 0

    w.config["smtp.tls.min.version"] = "1.2"
    w.start()
    final = final_by_id(kafka.results(topics.results, wait=5, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    assert all(m.meta["tls"] for m in server.wait_messages(5, timeout=30))


def test_tls_min_version_rejects_unknown_values():
    r = run([binary("kafka-mailer"), "-X", "smtp.tls.min.version=1.1", "--dump-config"],
            timeout=30)
    assert r.returncode != 0
    assert "smtp.tls.min.version" in r.stderr


# --- SMTPUTF8 ---------------------------------------------------------------------------

def utf8_request(i):
    return make_request(i, id=f"utf8-{i}", **{
        "from": "Jörg Müller <jörg@bücher.example>",
        "to": [f"Zoë <zoë{i}@例え.テスト>"],
        "cc": ["用户@例子.广告"],
        "bcc": ["ärger@bücher.example"],
        "reply_to": "hilfe@bücher.example",
        "subject": "Grüße",
    })


def test_utf8_addresses_are_sent_with_smtputf8_when_the_relay_offers_it(
        kafka, topics, capture_server, worker):
    server = capture_server()  # aiosmtpd: offers SMTPUTF8
    utf8 = [utf8_request(i) for i in range(5)]
    ascii_ = make_requests(5)
    kafka.produce(topics.requests, utf8 + ascii_)
    worker(cfg(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=10, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}, final
    assert final["utf8-0"]["message_id"] == "<utf8-0@bücher.example>"
    captured = server.wait_messages(10, timeout=30)
    by_from = {}
    for m in captured:
        by_from.setdefault(m.mail_from, []).append(m)
    got = by_from["jörg@bücher.example"]
    assert len(got) == 5
    for m in got:
        assert m.meta["smtputf8"] is True
        i = int(m.rcpt_tos[0][3])
        assert m.rcpt_tos == [f"zoë{i}@例え.テスト", "用户@例子.广告", "ärger@bücher.example"]
        header = m.raw.split(b"\r\n\r\n", 1)[0]
        # RFC 6532: the addresses raw in the headers; Bcc nowhere.
        assert f"<zoë{i}@例え.テスト>".encode() in header
        assert "<jörg@bücher.example>".encode() in header
        assert "hilfe@bücher.example".encode() in header
        assert "ärger".encode() not in header
        assert str(m.msg["Subject"]) == "Grüße"
    assert all(not m.meta["smtputf8"] for m in by_from["no-reply@shop.example"])


@pytest.mark.parametrize("relay", ["smtp-sink", "capture-server --no-smtputf8"])
def test_utf8_address_fails_clearly_when_the_relay_lacks_smtputf8(
        relay, kafka, topics, capture_server, smtp_sink, worker):
    if relay == "smtp-sink":
        server = smtp_sink()
    else:
        server = capture_server(extra=["--no-smtputf8"])
    url = server.url
    reqs = [utf8_request(0), make_request(1, id="ascii-1"),
            make_request(2, id="utf8-replyto", reply_to="hilfe@bücher.example"),
            make_request(3, id="ascii-3")]
    kafka.produce(topics.requests, reqs)
    worker(cfg(kafka, topics, url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=4, timeout=60))
    assert final["ascii-1"]["status"] == "sent"
    assert final["ascii-3"]["status"] == "sent"
    for rid in ("utf8-0", "utf8-replyto"):
        r = final[rid]
        # Valid request, undeliverable through this relay: failed, not rejected,
        # once (no retries), with the reason in the result.
        assert r["status"] == "failed", r
        assert r["attempts"] == 1, r
        assert "relay does not offer SMTPUTF8" in r["error"], r
        assert r["smtp_reply"] is None and r["smtp_code"] is None, r
    if relay != "smtp-sink":
        captured = server.wait_messages(2, timeout=30)
        assert sorted(m.rcpt_tos[0] for m in captured) == ["user1@example.com",
                                                           "user3@example.com"]
    kafka.wait_committed(topics.group, topics.requests, timeout=30)


# --- limits -----------------------------------------------------------------------------

def test_message_over_the_relays_size_fails_naming_size_and_is_not_sent(
        kafka, topics, capture_server, worker):
    server = capture_server(extra=["--max-size", "20000"])
    big = make_request(0, id="big", attachments=[{
        "filename": "big.bin", "content_type": "application/octet-stream",
        "content_base64": base64.b64encode(os.urandom(30000)).decode()}])
    kafka.produce(topics.requests, [big] + make_requests(3))
    worker(cfg(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=4, timeout=60))
    r = final["big"]
    assert r["status"] == "failed", r
    assert r["attempts"] == 1
    assert "SIZE" in r["error"] and "20000" in r["error"], r
    assert r["smtp_reply"] is None, r
    assert sum(1 for x in final.values() if x["status"] == "sent") == 3
    time.sleep(1)
    assert server.count() == 3, "the big message never reached DATA"


def test_request_limits_reject_naming_the_setting(kafka, topics, capture_server, worker):
    server = capture_server()
    many = make_request(0, id="many", to=[f"u{i}@example.com" for i in range(4)])
    at_limit = make_request(1, id="at-limit", to=[f"u{i}@example.com" for i in range(3)])
    big = make_request(2, id="big", text="x" * 3000)
    kafka.produce(topics.requests, [many, at_limit, big])  # keyed by id
    # The same without a key (as a producer that sets none would publish it).
    kafka.produce(topics.requests, [json.dumps(big)], "--raw")
    worker(cfg(kafka, topics, server.url, smtp_starttls="off",
               request_max_recipients=3, request_max_bytes=2048))
    wait_for(lambda: kafka.count(topics.results) >= 4, 60, "4 results", interval=0.5)
    results = kafka.results(topics.results, timeout=20)
    final = final_by_id(results)
    assert final["at-limit"]["status"] == "sent"
    assert "id_from" not in final["at-limit"]
    assert final["many"]["status"] == "rejected"
    assert "request.max.recipients (3)" in final["many"]["error"]
    assert "id_from" not in final["many"]
    # Too large to be parsed: the id is the Kafka key, and the result says so.
    assert final["big"]["status"] == "rejected"
    assert final["big"]["id_from"] == "key"
    assert "request.max.bytes (2048)" in final["big"]["error"]
    # With no key either, the result has id null.
    assert final[None]["status"] == "rejected"
    assert "id_from" not in final[None]
    assert "request.max.bytes (2048)" in final[None]["error"]
    assert final[None]["source"]["offset"] is not None
    assert kafka.count(topics.deadletter) == 3


def test_subject_and_header_limits_reject_naming_field_and_setting_and_send_nothing(
        kafka, topics, capture_server, worker):
    """Defaults: subject 2048 bytes, header value and display name 4096 bytes (UTF-8)."""
    server = capture_server()
    reqs = [
        make_request(0, id="subject-at", subject="é" * 1024),
        make_request(1, id="subject-over", subject="é" * 1024 + "x"),
        make_request(2, id="header-at", headers={"X-Tag": "h" * 4096}),
        make_request(3, id="header-over", headers={"X-Tag": "h" * 4097}),
        make_request(4, id="name-over", to=["n" * 4097 + " <n@example.com>"]),
    ]
    kafka.produce(topics.requests, reqs)
    worker(cfg(kafka, topics, server.url, smtp_starttls="off"))
    final = final_by_id(kafka.results(topics.results, wait=5, timeout=60))
    assert final["subject-at"]["status"] == "sent"
    assert final["header-at"]["status"] == "sent"
    for rid, why in (("subject-over",
                      "subject: 2049 bytes exceeds request.max.subject.bytes (2048)"),
                     ("header-over",
                      "headers.X-Tag: 4097 bytes exceeds request.max.header.bytes (4096)"),
                     ("name-over",
                      "to[0]: 4097 bytes exceeds request.max.header.bytes (4096)")):
        assert final[rid]["status"] == "rejected", final[rid]
        assert final[rid]["error"] == why
    time.sleep(1)
    mids = captured_mids(server.dir)
    assert set(mids) == {final["subject-at"]["message_id"],
                         final["header-at"]["message_id"]}, mids


def test_limit_defaults_are_documented_in_help():
    out = run([binary("kafka-mailer"), "--help"], timeout=30, check=True).stdout
    for key, default in (("request.max.bytes", "4194304"),
                         ("request.max.recipients", "100"),
                         ("request.max.subject.bytes", "2048"),
                         ("request.max.header.bytes", "4096"),
                         ("smtp.tls.min.version", "1.2"),
                         ("smtp.tls.verify", "true")):
        line = next(l for l in out.splitlines() if f"  {key} (" in l)
        assert default in line, line


# --- secrets ----------------------------------------------------------------------------

def kafka_segment_bytes(kafka, *topics_):
    """Every byte the broker stored for these topics (its log segment files)."""
    root = Path(kafka.dir) if kafka.dir else None
    assert root is not None, "needs the harness's own broker (not KM_KAFKA_BOOTSTRAP)"
    data = b""
    seen = 0
    for seg in root.rglob("*.log"):
        if any(seg.parent.name.rsplit("-", 1)[0] == t for t in topics_):
            data += seg.read_bytes()
            seen += 1
    assert seen >= len(topics_), f"segments found: {seen}"
    return data


def test_the_password_appears_in_no_log_result_dead_letter_retry_help_or_dump(
        kafka, topics, capture_server, worker, tmpdir_fast):
    server = capture_server(tls=True, require_tls=True, auth=f"mailer:{SECRET}",
                            reject_rcpt="refuse-me", tempfail_first=3)
    pwfile = tmpdir_fast / "smtp-password"
    pwfile.write_text(SECRET + "\n")
    pwfile.chmod(0o600)
    valid = make_requests(30)
    refused = [make_request(100 + i, id=f"refused-{i}", to=["refuse-me@example.com"])
               for i in range(3)]
    invalid = [b'{"id": "bad-1", "from": "a@example.com"}',
               b'{"id": "bad-2", "from": "a@example.com", "to": ["b@example.com"],'
               b' "headers": {"Date": "x"}, "text": "x"}']
    kafka.produce(topics.requests, valid[:10] + refused)
    kafka.produce(topics.requests, invalid, "--raw")
    base = cfg(kafka, topics, server.url, smtp_starttls="required",
               smtp_tls_ca_file=server.ca_file, smtp_username="mailer",
               log_level="debug", retry_local_window_ms=0,
               retry_backoff_initial_ms=100, retry_backoff_max_ms=500,
               # uncompressed records, so the broker's files can be grepped
               kafka_producer_compression_type="none")

    # 1. A wrong password, from the environment: AUTH fails, the relay backs off.
    w = worker(base, env={"KAFKA_MAILER_SMTP_PASSWORD": WRONG_SECRET}, name="secrets")
    w.wait_log("AUTH failed", timeout=30)
    time.sleep(1)
    assert w.stop() == 0
    # The mail waits for the relay: only the invalid requests have a result.
    assert {r["status"] for r in kafka.results(topics.results, timeout=20)} <= {"rejected"}

    # 2. The right password from smtp.password.file: everything goes through,
    #    with failures, rejections and retries through the retry topic.
    w.env = {}
    w.config["smtp.password.file"] = str(pwfile)
    w.start()
    kafka.produce(topics.requests, valid[10:20])
    final = final_by_id(kafka.results(topics.results, wait=25, timeout=90))
    assert w.stop() == 0

    # 3. The right password from the environment.
    del w.config["smtp.password.file"]
    w.env = {"KAFKA_MAILER_SMTP_PASSWORD": SECRET}
    w.start()
    kafka.produce(topics.requests, valid[20:])
    final = final_by_id(kafka.results(topics.results, wait=35, timeout=90))
    assert w.stop() == 0
    statuses = {rid: r["status"] for rid, r in final.items()}
    assert [statuses[r["id"]] for r in valid] == ["sent"] * 30
    assert all(statuses[r["id"]] == "failed" for r in refused)
    assert statuses["bad-1"] == statuses["bad-2"] == "rejected"
    captured = server.wait_messages(30, timeout=30)
    assert all(m.meta["auth_user"] == "mailer" and m.meta["tls"] for m in captured)
    assert kafka.count(topics.retry) >= 1, "a retry record was written"
    # >= 2: the watermark held the rejections' offsets behind the waiting mail in
    # phase 1, so phase 2 read them again (at-least-once).
    assert kafka.count(topics.deadletter) >= 2

    # Where the password could leak: every worker log, every record of the results,
    # dead-letter and retry topics, --help, --dump-config with each source set.
    places = {"worker logs": w.all_logs(),
              "results (decoded)": "\n".join(str(r) for r in
                                             kafka.results(topics.results, timeout=20))}
    seg = kafka_segment_bytes(kafka, topics.results, topics.deadletter, topics.retry)
    assert b'"status":"sent"' in seg or b'"status": "sent"' in seg, \
        "the broker's files are readable as text"
    places["results, dead-letter and retry topics (broker files)"] = \
        seg.decode("utf-8", "replace")
    km = binary("kafka-mailer")
    places["--help"] = run([km, "--help"], timeout=30).stdout
    for name, argv, env in (
            ("-X", [km, "-X", "smtp.username=u", "-X", f"smtp.password={SECRET}",
                    "--dump-config"], None),
            ("env", [km, "-X", "smtp.username=u", "--dump-config"],
             {"KAFKA_MAILER_SMTP_PASSWORD": SECRET}),
            ("file", [km, "-X", "smtp.username=u", "-X",
                      f"smtp.password.file={pwfile}", "--dump-config"], None),
            ("kafka secret", [km, "-X", f"kafka.sasl.password={SECRET}",
                              "--dump-config"], None),
            ("bad value next to it", [km, "-X", f"smtp.password={SECRET}",
                                      "-X", "smtp.sessions.max=0"], None)):
        r = run(argv, timeout=30, env=env)
        places[f"--dump-config ({name})"] = r.stdout + r.stderr
        if name != "bad value next to it":
            assert r.returncode == 0, r.stderr
            assert "***" in r.stdout
    for where, text in places.items():
        assert text, f"nothing read from {where}"
        for pw in (SECRET, WRONG_SECRET):
            assert pw not in text, f"password found in {where}"
