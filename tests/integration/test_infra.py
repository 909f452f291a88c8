"""Smoke tests of the test infrastructure itself: Kafka, capture-server, smtp-sink."""

import json
import smtplib
import ssl

import pytest

from harness import binary, make_request, run, unique


def _msg(subject: str) -> bytes:
    return (f"From: a@shop.example\r\nTo: b@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@shop.example>\r\n\r\n"
            ".leading dot line\r\nbody\r\n").encode()


def test_kafka_is_reachable(kafka):
    kafka.wait_ready(timeout=30)
    assert kafka.bootstrap.startswith("127.0.0.1:")


@pytest.mark.needs_tools
def test_kafka_topic_roundtrip_with_tools(kafka):
    topic = unique("infra")
    kafka.create_topics(f"{topic}:2")
    assert kafka.count(topic) == 0
    kafka.produce(topic, [make_request(i) for i in range(5)])
    assert kafka.count(topic) == 5


@pytest.mark.needs_tools
def test_mailer_produce_says_what_is_wrong_with_a_line_and_publishes_the_rest(kafka):
    """Every refused line gets a reason about the input, with its line and column, not a
    library's flag name; the good lines are all published."""
    topic = unique("infra")
    kafka.create_topics(f"{topic}:1")
    good = [json.dumps(make_request(i)).encode() for i in range(3)]
    bad = {
        b'{"id": "x", "subject": "a\\u0000b"}': "holds \\u0000 (a NUL character)",
        b'{"id": "x", "subject": "\xc3"}': "not valid UTF-8",
        b'{"id": "x", "subject": ': "ends before the JSON value does",
        b'{"id": "x"} {"id": "y"}': "more text after the JSON value",
        b'[1, 2]': "a request is a JSON object ({...}), not an array",
        b'"text"': "not a string",
        b'{"id": "x",, }': "not valid JSON: ",
    }
    lines = [good[0], *bad, good[1], good[2]]
    r = run([binary("mailer-produce"), "-b", kafka.bootstrap, "-t", topic],
            input=b"\n".join(lines) + b"\n")
    for n, (line, words) in enumerate(bad.items(), start=2):
        said = [x for x in r.stderr.splitlines() if x.startswith(f"mailer-produce: <stdin>:{n}: ")]
        assert said and words in said[0], (line, r.stderr)
    assert "JSON_ALLOW_NUL" not in r.stderr
    assert f"produced=3 skipped={len(bad)}" in r.stderr
    assert kafka.count(topic) == 3


def test_capture_server_stores_plain_message(capture_server):
    srv = capture_server()
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("pipelining")
        assert not s.has_extn("auth")
        s.sendmail("a@shop.example", ["b@example.com", "c@example.com"], _msg("plain"))
    [m] = srv.wait_messages(1, timeout=10)
    assert m.mail_from == "a@shop.example"
    assert m.rcpt_tos == ["b@example.com", "c@example.com"]
    assert m.meta["tls"] is False and m.meta["auth_user"] is None
    assert m.msg["Subject"] == "plain"
    assert b"\r\n.leading dot line\r\n" in m.raw  # dot-unstuffed, CRLF kept


def test_capture_server_starttls_and_auth(capture_server):
    srv = capture_server(tls=True, require_tls=True, auth="mailer:s3cret")
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))  # verifies name and chain

    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")  # AUTH only after STARTTLS
        code, _ = s.mail("a@shop.example")
        assert code == 530  # --require-tls
        s.starttls(context=ctx)
        s.ehlo()
        assert s.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("mailer", "wrong")
        assert e.value.smtp_code == 535
        s.login("mailer", "s3cret")
        s.sendmail("a@shop.example", ["b@example.com"], _msg("tls-auth"))

    with smtplib.SMTP("localhost", srv.port, timeout=10) as s:
        s.starttls(context=ctx)  # the certificate names localhost too
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("a@shop.example", ["b@example.com"], _msg("no-auth"))
        assert e.value.smtp_code == 530  # authentication required

    [m] = srv.wait_messages(1, timeout=10)
    assert m.meta["tls"] is True
    assert m.meta["auth_user"] == "mailer"
    assert m.msg["Subject"] == "tls-auth"


def test_capture_server_faults(capture_server):
    srv = capture_server(tempfail_first=1, reject_rcpt="bounce")
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@shop.example", ["b@example.com"], _msg("first"))
        assert e.value.smtp_code == 451
        s.rset()
        refused = s.sendmail("a@shop.example", ["bounce@example.com", "ok@example.com"],
                             _msg("second"))
        assert refused["bounce@example.com"][0] == 550
    [m] = srv.wait_messages(1, timeout=10)
    assert m.rcpt_tos == ["ok@example.com"]
    assert srv.count() == 1


def test_smtp_sink_accepts(smtp_sink):
    sink = smtp_sink()
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as s:
        s.sendmail("a@shop.example", ["b@example.com"], _msg("sink"))


@pytest.mark.needs_worker
def test_worker_binary_runs():
    from harness import binary, run
    r = run([binary("kafka-mailer"), "--help"], timeout=10)
    assert r.returncode in (0, 1, 2)
    assert "kafka-mailer" in (r.stdout + r.stderr)


@pytest.mark.needs_worker
def test_cmake_install_puts_binaries_unit_and_docs_under_the_prefix():
    """`cmake --install BUILD --prefix P`: the worker and every tool in P/bin, runnable
    there (librdkafka found through the rpath); a systemd unit whose ExecStart is
    P/bin/kafka-mailer and that systemd-analyze accepts; the example configuration and
    the docs in P/share/doc/kafka-mailer."""
    from harness import REPO, build_dir, make_tmpdir
    prefix = make_tmpdir("install") / "prefix"
    r = run(["cmake", "--install", str(build_dir()), "--prefix", str(prefix)], timeout=60)
    assert r.returncode == 0, r.stderr
    tools = sorted(p.stem for p in (REPO / "producer-tools").glob("mailer-*.c"))
    assert tools, "no tool sources found"
    assert sorted(p.name for p in (prefix / "bin").iterdir()) == sorted(["kafka-mailer"] + tools)
    v = run([str(prefix / "bin" / "kafka-mailer"), "--version"], timeout=10)
    assert v.returncode == 0 and v.stdout.startswith("kafka-mailer "), v
    for tool in tools:
        h = run([str(prefix / "bin" / tool), "--help"], timeout=10)
        assert "usage" in (h.stdout + h.stderr).lower(), (tool, h)
    unit = prefix / "lib" / "systemd" / "system" / "kafka-mailer.service"
    text = unit.read_text()
    assert f"ExecStart={prefix}/bin/kafka-mailer -c " in text
    assert f"Documentation=file://{prefix}/share/doc/kafka-mailer/README.md" in text
    a = run(["systemd-analyze", "verify", str(unit)], timeout=60)
    assert a.returncode == 0, a.stdout + a.stderr
    doc = prefix / "share" / "doc" / "kafka-mailer"
    for name in ("README.md", "kafka-mailer.properties.example", "docs/configuration.md",
                 "docs/operations.md", "docs/wire-format.md"):
        assert (doc / name).is_file(), name
