"""Kafka security: a broker with a SASL_SSL listener, SCRAM-SHA-512 users and the
StandardAuthorizer with per-topic ACLs (deploy/local/kafka-start --sasl-ssl), and the
worker and the tools against it, with the right credentials and with each way of being
refused (a wrong password, an untrusted CA, a missing ACL)."""

import pytest

from harness import Kafka, Topics, make_tmpdir

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
