"""Several relays (relay.<name>.*): traffic split by weight, routes by sender domain and
priority, and failover: mail goes around a relay that refuses connections, which is
probed and takes its share again when it is back. Counted at the SMTP servers by
Message-ID, on the results topic and at the broker's committed offsets."""
import re
import time
import urllib.request

import pytest

from harness import (Topics, Worker, captured_mids, final_by_id, free_port, make_request,
                     make_requests, wait_for)

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]


def relay_metric(port, name, relay):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^" + re.escape(name) + r'\{relay="' + re.escape(relay) + r'"\} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else None


def mid(req):
    """The Message-ID the worker gives @req: its id at the From address's domain."""
    domain = req["from"].rstrip(">").rsplit("@", 1)[1]
    return f"<{req['id']}@{domain}>"


def test_a_relay_refusing_connections_is_routed_around_probed_and_rejoins(
        kafka, topics, capture_server, worker):
    a = capture_server()
    b_port = free_port()  # nothing listens there yet: connections are refused
    mport = free_port()
    first = make_requests(200)
    kafka.produce(topics.requests, first)
    w = worker(Worker.base_config(
        kafka, topics, a.url, smtp_starttls="off", inflight_max=200,
        relay_a_url=a.url, relay_b_url=f"smtp://127.0.0.1:{b_port}",
        smtp_relay_backoff_initial_ms=100, smtp_relay_backoff_max_ms=400,
        smtp_relay_probe_ms=300, metrics_listen=f"127.0.0.1:{mport}"))

    final = final_by_id(kafka.results(topics.results, wait=200, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}, "nothing fails for b"
    got = captured_mids(a.dir)
    assert all(got[mid(r)] >= 1 for r in first), "every message reached a"
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    assert relay_metric(mport, "kafka_mailer_relay_up", "b") == 0
    assert relay_metric(mport, "kafka_mailer_relay_up", "a") == 1

    # b is probed without mail to send: its failed set-ups go on growing, at the
    # probe's pace (every 300 ms at most), not in a busy loop.
    f0 = relay_metric(mport, "kafka_mailer_relay_session_failures_total", "b")
    time.sleep(2)
    f1 = relay_metric(mport, "kafka_mailer_relay_session_failures_total", "b")
    assert 2 <= f1 - f0 <= 20, (f0, f1)

    # b comes back: a probe opens a session and b takes its share again.
    b = capture_server(port=b_port)
    wait_for(lambda: relay_metric(mport, "kafka_mailer_relay_up", "b") == 1, 10,
             "relay b healthy again")
    second = make_requests(300)
    kafka.produce(topics.requests, second)
    final = final_by_id(kafka.results(topics.results, wait=500, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    at_a, at_b = captured_mids(a.dir), captured_mids(b.dir)
    assert all(at_a[mid(r)] + at_b[mid(r)] >= 1 for r in second)
    n_b = sum(1 for r in second if at_b[mid(r)])
    # equal weights: about half each (binomial, 300 draws: far inside 60..240)
    assert 60 <= n_b <= 240, n_b
    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    assert w.alive()


def test_routes_by_priority_and_sender_domain_and_weights(kafka, topics, capture_server,
                                                          worker):
    bulk, tx, news, spare = (capture_server() for _ in range(4))
    reqs = ([make_request(i, priority="bulk") for i in range(60)]
            + [make_request(100 + i) for i in range(60)]
            + [make_request(200 + i, **{"from": "News <n@news.shop.example>"})
               for i in range(60)])
    kafka.produce(topics.requests, reqs)
    worker(Worker.base_config(
        kafka, topics, tx.url, smtp_starttls="off",
        relay_bulk_url=bulk.url, relay_bulk_route_priority="bulk",
        relay_tx_url=tx.url, relay_tx_weight=3,
        relay_spare_url=spare.url, relay_spare_weight=1,
        relay_news_url=news.url, relay_news_route_sender_domains="*.shop.example",
        relay_news_route_priority="transactional"))
    final = final_by_id(kafka.results(topics.results, wait=180, timeout=60))
    assert {r["status"] for r in final.values()} == {"sent"}
    at = {name: captured_mids(s.dir) for name, s in
          (("bulk", bulk), ("tx", tx), ("news", news), ("spare", spare))}

    def where(r):
        return sorted(n for n, got in at.items() if got[mid(r)])

    # bulk requests: the bulk relay, the most specific match (priority rule); the
    # result names the relay that carried it
    assert all(where(r) == ["bulk"] for r in reqs[:60])
    assert all(final[r["id"]]["relay"] == bulk.url for r in reqs[:60])
    assert all(final[r["id"]]["relay"] == news.url for r in reqs[120:])
    # transactional from shop.example: tx and spare by weight 3:1 (news matches
    # *.shop.example only for subdomains)
    plain = [where(r) for r in reqs[60:120]]
    assert all(p in (["tx"], ["spare"]) for p in plain), plain
    assert plain.count(["tx"]) > plain.count(["spare"])
    # transactional from news.shop.example: news (two rules beat none)
    assert all(where(r) == ["news"] for r in reqs[120:])


def test_a_route_no_relay_covers_is_refused_at_start(kafka, topics, worker):
    topics = Topics.new(partitions=1)
    cfg = Worker.base_config(kafka, topics, "smtp://127.0.0.1:1",
                             relay_a_url="smtp://127.0.0.1:1",
                             relay_a_route_priority="bulk")
    w = worker(cfg)
    assert w.wait(20) != 0
    assert "no relay takes transactional requests" in w.all_logs()
