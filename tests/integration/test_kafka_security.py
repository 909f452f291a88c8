"""Kafka security: a broker with a SASL_SSL listener, SCRAM-SHA-512 users and the
StandardAuthorizer with per-topic ACLs (deploy/local/kafka-start --sasl-ssl), and the
worker and the tools against it, with the right credentials and with each way of being
refused (a wrong password, an untrusted CA, a missing ACL)."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import (Kafka, Topics, Worker, binary, free_port, make_requests,
                     make_tmpdir, run, wait_for)
from kmstack import make_ca

USER = "mailer"
PASSWORD = "mailer-" + "pw-7f3c9a"


@pytest.fixture(scope="module")
def skafka():
    """A SASL_SSL broker for the module, with the SCRAM user USER."""
    k = Kafka.start(make_tmpdir("kafka-sasl"), sasl_ssl=True,
                    scram_users=[f"{USER}:{PASSWORD}"])
    try:
        k.wait_ready(60)
        yield k
    finally:
        k.stop()


def test_secured_broker_lets_admin_in_and_a_user_only_where_an_acl_allows(skafka):
    t = Topics.new(partitions=2).create(skafka)
    assert skafka.count(t.requests) == 0
    user = [a for k, v in skafka.client_config(USER, PASSWORD).items()
            for a in ("-X", f"{k}={v}")]
    r = skafka.admin(*user, "count", t.requests, timeout=60)
    assert r.returncode != 0, r.stdout
    skafka.acl("add", f"User:{USER}", f"topic:{t.requests}", "DESCRIBE", "READ")
    r = skafka.admin(*user, "count", t.requests, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "0"


def fetch(port: int, path: str):
    """(status, body) of GET http://127.0.0.1:PORT/PATH (bounded); (0, "") when
    nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""  # not listening yet


def metric(port: int, name: str) -> float:
    for line in fetch(port, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def grant_worker(k, t: Topics, user: str = USER) -> None:
    """The ACLs a worker needs (docs/operations.md, Secured Kafka)."""
    p = f"User:{user}"
    k.acl("add", p, f"topic:{t.requests}", "READ", "DESCRIBE")
    k.acl("add", p, f"topic:{t.retry}", "READ", "WRITE", "DESCRIBE")
    k.acl("add", p, f"topic:{t.results}", "WRITE", "DESCRIBE", "READ")
    k.acl("add", p, f"topic:{t.deadletter}", "WRITE", "DESCRIBE")
    k.acl("add", p, f"group:{t.group}", "READ", "DESCRIBE")
    k.acl("add", p, f"group:{t.group}.retry", "READ", "DESCRIBE")
    k.acl("add", p, "cluster", "IDEMPOTENT_WRITE")


def secured_worker(worker, k, t, smtp_url, password=PASSWORD, ca=None):
    """A worker as USER, its password read from a file; returns (worker, port)."""
    d = make_tmpdir("secret")
    pw = d / "kafka-password"
    pw.write_text(password + "\n")
    port = free_port()
    cfg = Worker.base_config(k, t, smtp_url, metrics_listen=f"127.0.0.1:{port}",
                             smtp_starttls="off")
    for key, v in k.client_config(USER, password, ca=ca).items():
        if key != "sasl.password":
            cfg[f"kafka.{key}"] = v
    cfg["kafka.sasl.password.file"] = str(pw)
    return worker(cfg), port


@pytest.fixture(scope="module")
def granted(skafka):
    t = Topics.new(partitions=2).create(skafka)
    grant_worker(skafka, t)
    return t


@pytest.mark.needs_worker
def test_worker_with_its_credentials_sends_commits_and_is_ready(skafka, granted,
                                                               capture_server, worker):
    cap = capture_server()
    w, port = secured_worker(worker, skafka, granted, cap.url)
    skafka.produce(granted.requests, make_requests(5))
    cap.wait_messages(5, timeout=60)
    skafka.wait_committed(granted.group, granted.requests, timeout=60)
    wait_for(lambda: fetch(port, "/readyz") == (200, "ready\n"), 20, "/readyz 200")
    assert metric(port, "kafka_mailer_kafka_ready") == 1
    assert skafka.wait_audit(granted, 5)["lost"] == 0
    assert "sasl.password.file=" in run([binary("kafka-mailer"), "-c", w.config_path,
                                         "--dump-config"], timeout=30).stdout


@pytest.mark.needs_worker
@pytest.mark.parametrize("case", ["authentication", "tls"])
def test_worker_refused_is_not_ready_and_says_why(skafka, granted, worker, case):
    ca = make_ca(make_tmpdir("other-ca")) if case == "tls" else None
    password = "wrong-password" if case == "authentication" else PASSWORD
    w, port = secured_worker(worker, skafka, granted, "smtp://127.0.0.1:9",
                             password=password, ca=ca)
    wait_for(lambda: fetch(port, "/readyz")[0] == 503
             and fetch(port, "/readyz")[1].startswith(case), 30, f"/readyz 503 {case}")
    assert fetch(port, "/healthz")[0] == 200
    assert metric(port, "kafka_mailer_kafka_ready") == 0
    w.wait_log(f"cause={case}", timeout=30)


@pytest.mark.needs_worker
def test_worker_without_read_acl_says_authorization_and_resumes_when_it_is_back(
        skafka, capture_server, worker):
    t = Topics.new(partitions=2).create(skafka)
    grant_worker(skafka, t)
    cap = capture_server()
    w, port = secured_worker(worker, skafka, t, cap.url)
    skafka.produce(t.requests, make_requests(2))
    cap.wait_messages(2, timeout=60)
    skafka.acl("remove", f"User:{USER}", f"topic:{t.requests}", "READ")
    wait_for(lambda: fetch(port, "/readyz")[1].startswith("authorization"), 30,
             "/readyz authorization")
    w.wait_log("cause=authorization", timeout=30)
    assert metric(port, "kafka_mailer_kafka_ready") == 0
    skafka.produce(t.requests, make_requests(3))
    time.sleep(2)
    assert cap.count() == 2
    skafka.acl("add", f"User:{USER}", f"topic:{t.requests}", "READ")
    restored = time.monotonic()
    cap.wait_messages(5, timeout=30)
    took = time.monotonic() - restored
    assert took < 15, f"consumed {took:.1f}s after the ACL was back"
    skafka.wait_committed(t.group, t.requests, timeout=60)


# --- the tools with -F ---------------------------------------------------------------

TOOLS = ["mailer-produce", "mailer-results", "mailer-admin", "mailer-audit",
         "mailer-replay", "mailer-loadgen"]


def properties_file(k, password=PASSWORD, ca=None, user=USER) -> Path:
    """A -F file for @user: comments, blank and CRLF lines, spaces around '=',
    and the password in a file of its own (sasl.password.file)."""
    d = make_tmpdir("props")
    (d / "password").write_text(password + "\n")
    lines = ["# kafka-mailer tools", ""]
    for key, v in k.client_config(user, password, ca=ca).items():
        if key != "sasl.password":
            lines.append(f"  {key} = {v}")
    lines.append(f"sasl.password.file={d / 'password'}")
    path = d / "client.properties"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def run_tool(k, tool: str, props: Path, t: Topics):
    """@tool with -F @props against @t, each call bounded (--timeout, or
    message.timeout.ms for the producers, which wait 10 s at most for the
    metadata)."""
    bound = ["-X", "message.timeout.ms=10000"]
    args = {
        "mailer-produce": ["-t", t.requests, *bound],
        "mailer-loadgen": ["-t", t.requests, "-n", "2", *bound],
        "mailer-results": ["-t", t.results, "--timeout", "15"],
        "mailer-admin": ["count", t.requests, "--timeout", "15"],
        "mailer-audit": ["--requests", t.requests, "--results", t.results,
                         "--timeout", "15"],
        "mailer-replay": ["--results", t.results, "--requests", t.requests,
                          "--timeout", "15"],
    }[tool]
    stdin = None
    if tool == "mailer-produce":
        stdin = "".join(json.dumps(r) + "\n" for r in make_requests(1)).encode()
    return run([binary(tool), "-b", k.bootstrap, "-F", props, *args], timeout=90,
               input=stdin)


@pytest.fixture(scope="module")
def tool_topics(skafka):
    """Topics USER may use (granted), and topics it has no ACL on."""
    granted = Topics.new(partitions=2).create(skafka)
    grant_worker(skafka, granted)
    skafka.acl("add", f"User:{USER}", f"topic:{granted.requests}", "WRITE")
    ungranted = Topics.new(partitions=2).create(skafka)
    return granted, ungranted


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_with_a_properties_file_and_its_credentials_works(skafka, tool_topics,
                                                               tool):
    r = run_tool(skafka, tool, properties_file(skafka), tool_topics[0])
    ok = (0, 4) if tool == "mailer-audit" else (0,)  # 4: requests without results
    assert r.returncode in ok, r.stderr
    assert "authentication" not in r.stderr and "TLS" not in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["authentication", "tls", "authorization"])
@pytest.mark.parametrize("tool", TOOLS)
def test_tool_refused_exits_2_and_names_the_cause(skafka, tool_topics, tool, case):
    granted, ungranted = tool_topics
    if case == "authentication":
        props, t = properties_file(skafka, password="wrong-password"), granted
        expect = "authentication failed (SASL/SCRAM-SHA-512: check sasl.username " \
                 "and sasl.password)"
    elif case == "tls":
        props = properties_file(skafka, ca=make_ca(make_tmpdir("other-ca")))
        t, expect = granted, "TLS: the broker's certificate is not trusted " \
                             "(ssl.ca.location)"
    else:
        props, t = properties_file(skafka), ungranted
        expect = "not authorized: "
    r = run_tool(skafka, tool, props, t)
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr}"
    assert expect in r.stderr, r.stderr
    if case == "authorization":
        assert f"topic {t.requests} (missing ACL)" in r.stderr or \
            f"topic {t.results} (missing ACL)" in r.stderr, r.stderr
    assert PASSWORD not in r.stderr and "wrong-password" not in r.stderr


def test_tool_properties_file_errors_name_the_file_and_line_not_the_secret():
    d = make_tmpdir("props-bad")
    bad = d / "bad.properties"
    bad.write_text("# x\n\nsasl.password " + PASSWORD + "\n")
    r = run([binary("mailer-admin"), "-F", bad, "count", "t"], timeout=30)
    assert r.returncode == 1
    assert f"mailer-admin: -F {bad}:3: expected key=value" in r.stderr, r.stderr
    assert PASSWORD not in r.stderr
    bad.write_text("sasl.username=u\nsasl.password.file=/nonexistent/pw\n")
    r = run([binary("mailer-results"), "-F", bad], timeout=30)
    assert r.returncode == 1
    assert f"-F {bad}:2: sasl.password.file: cannot open \"/nonexistent/pw\"" \
        in r.stderr, r.stderr
