"""Monitoring: deploy/prometheus/rules.yml passes promtool's checks and its unit tests
(rules.test.yml), the Grafana dashboard and the rules name only documented metrics, and
a real Prometheus (Debian's prometheus package) scraping a live worker reads back what
the worker did, evaluates every rule and holds the relay-down and worker-not-ready
alerts pending for the right series."""
import json
import re
import shutil
import time
import urllib.parse
import urllib.request

import pytest

from harness import (REPO, Topics, Worker, free_port, make_requests, make_tmpdir, run,
                     wait_for)
from kmstack import Proc

PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "kafka-mailer.json"
DASHBOARD_VARS = {"$job": "kafka-mailer", "$instance": ".*", "$group": ".*",
                  "$__rate_interval": "1m"}
# Metric names that are not the worker's (Prometheus' own, the Kafka exporter's).
FOREIGN_METRICS = {"up", "kafka_consumergroup_lag"}


def need(program):
    path = shutil.which(program)
    assert path, f"{program} not installed (Debian package prometheus: deploy/local/install-deps)"
    return path


def promtool(*args):
    """Runs promtool; fails the test, with its output, unless it exits 0."""
    r = run([need("promtool"), *args], timeout=120)
    assert r.returncode == 0, \
        f"promtool {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(text):
    """kafka_mailer_* names in PromQL text, leaving out recorded names (level:name:ops)."""
    return set(re.findall(r"(?<![\w:])(kafka_mailer_\w+)(?![\w:])", text))


def test_promtool_accepts_the_rules_config_and_passes_the_rule_unit_tests(tmp_path):
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out
    out = promtool("test", "rules", str(PROM_DIR / "rules.test.yml"))
    assert "SUCCESS" in out
    # The compose config names the rules where the container mounts them.
    cfg = (PROM_DIR / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules.yml" in cfg
    local = tmp_path / "prometheus.yml"
    local.write_text(cfg.replace("/etc/prometheus/rules.yml", str(RULES)))
    promtool("check", "config", str(local))


def test_dashboard_and_rules_name_only_documented_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "kafka-mailer" and dash["schemaVersion"] >= 39
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "job", "instance"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        for t in p.get("targets", []):
            assert t["expr"] and t["refId"], p["title"]
    documented = metric_names((REPO / "docs" / "operations.md").read_text())
    used = metric_names(RULES.read_text())
    used |= {m for _, e in dashboard_exprs() for m in metric_names(e)}
    # a histogram's series are documented by its name
    used = {re.sub(r"_(bucket|sum|count)$", "", m) if m.endswith(
        ("_seconds_bucket", "_seconds_sum", "_seconds_count")) else m for m in used}
    assert used - documented == set(), "metrics not in docs/operations.md"


# --- a real Prometheus against a live worker -----------------------------------------

class Prometheus:
    """Debian's prometheus on 127.0.0.1 with its storage in @dir, scraping @targets
    every second and evaluating rules.yml every second."""

    def __init__(self, dir, targets):
        self.port = free_port()
        cfg = dir / "prometheus.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "kafka-mailer",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.proc = Proc([need("prometheus"), f"--config.file={cfg}",
                          f"--storage.tsdb.path={dir / 'data'}",
                          f"--web.listen-address=127.0.0.1:{self.port}",
                          "--log.level=warn"], "prometheus", dir)
        wait_for(self.ready, 60, "prometheus ready")

    def get(self, path, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def ready(self):
        assert self.proc.alive(), f"prometheus exited: {self.proc.log_path.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr):
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr):
        """The single sample of @expr as a float, or None when there is none."""
        r = self.query(expr)
        return float(r[0]["value"][1]) if len(r) == 1 else None

    def alerts(self, name):
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == name]

    def stop(self):
        self.proc.stop(timeout=20)


@pytest.fixture
def prometheus():
    """Factory: prometheus(targets) -> a started Prometheus, stopped by pid at the end."""
    started = []

    def start(targets):
        p = Prometheus(make_tmpdir("prometheus"), targets)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.mark.needs_worker
@pytest.mark.needs_tools
def test_prometheus_reads_a_live_worker_evaluates_the_rules_and_holds_alerts(
        kafka, topics: Topics, capture_server, worker, prometheus):
    a = capture_server()
    dead = free_port()  # nothing listens there: relay b refuses connections
    mport = free_port()
    w = worker(Worker.base_config(
        kafka, topics, a.url, smtp_starttls="off", relay_a_url=a.url,
        relay_b_url=f"smtp://127.0.0.1:{dead}", smtp_relay_backoff_initial_ms=100,
        smtp_relay_backoff_max_ms=400, smtp_relay_probe_ms=300,
        metrics_listen=f"127.0.0.1:{mport}"))
    instance = f"127.0.0.1:{mport}"
    prom = prometheus([instance])
    # A scrape before the sends, so that rates see the counters grow from 0.
    wait_for(lambda: prom.value(f'up{{instance="{instance}"}}') == 1, 30, "first scrape")

    n = 40
    kafka.produce(topics.requests, make_requests(n))
    results = kafka.results(topics.results, wait=n, timeout=60)
    assert {r["status"] for r in results} == {"sent"}
    kafka.wait_committed(topics.group, topics.requests, timeout=30)

    # What the worker did, read back through the query API.
    sent = 'sum(kafka_mailer_results_total{job="kafka-mailer",status="sent"})'
    wait_for(lambda: prom.value(sent) == n, 30, f"{sent} == {n}")
    # The latency histograms: one observation per request sent, and a median
    # between the first bucket and a minute.
    assert prom.value('sum(kafka_mailer_request_duration_seconds_count)') == n
    assert prom.value('sum(kafka_mailer_send_duration_seconds_count)') >= n
    p50 = prom.value('histogram_quantile(0.5, sum by (le) '
                     '(kafka_mailer_request_duration_seconds_bucket))')
    assert p50 is not None and 0 < p50 < 60, p50

    # Every rule of rules.yml loaded and evaluated without error.
    def rules_ok():
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None
    rules = wait_for(rules_ok, 30, "every rule evaluated with health ok")
    names = {r["name"] for r in rules}
    assert {"KafkaMailerRelayDown", "KafkaMailerAllRelaysDown", "KafkaMailerCommitLagGrowing",
            "KafkaMailerRetryBacklogGrowing", "KafkaMailerRejectionsSpiking",
            "KafkaMailerWorkerNotReady", "job:kafka_mailer_results:rate5m"} <= names

    # Recording rules: results by status, relays up by relay.
    wait_for(lambda: (prom.value('job:kafka_mailer_results:rate5m{status="sent"}') or 0) > 0,
             30, "recorded send rate above 0")
    assert prom.value('job_relay:kafka_mailer_relay_up:sum{relay="a"}') == 1
    assert prom.value('job_relay:kafka_mailer_relay_up:sum{relay="b"}') == 0

    # Relay b down: KafkaMailerRelayDown pending (for: 5m) for b only, templated.
    down = wait_for(lambda: prom.alerts("KafkaMailerRelayDown"), 20, "relay-down alert")
    assert [(x["labels"]["relay"], x["state"]) for x in down] == [("b", "pending")]
    assert down[0]["labels"]["instance"] == instance
    assert down[0]["annotations"]["summary"] == f"Relay b down on {instance}"
    assert down[0]["annotations"]["runbook"] == "docs/operations.md#kafkamailerrelaydown"
    assert prom.alerts("KafkaMailerAllRelaysDown") == [], "relay a still takes mail"
    assert prom.alerts("KafkaMailerWorkerNotReady") == []

    # Every dashboard query is valid PromQL; the outcome panel has data.
    for title, expr in dashboard_exprs():
        for k, v in DASHBOARD_VARS.items():
            expr = expr.replace(k, v)
        result = prom.query(expr)
        if title == "Results by outcome":
            rates = {r["metric"]["status"]: float(r["value"][1]) for r in result}
            assert set(rates) == {"sent", "failed", "rejected", "expired"}, result
            assert [k for k, v in rates.items() if v > 0] == ["sent"], result

    # The worker stops: up == 0 and KafkaMailerWorkerNotReady pending (for: 2m).
    assert w.stop(timeout=30) == 0
    t0 = time.monotonic()
    nr = wait_for(lambda: prom.alerts("KafkaMailerWorkerNotReady"), 20, "not-ready alert")
    assert [(x["labels"]["instance"], x["state"]) for x in nr] == [(instance, "pending")]
    assert time.monotonic() - t0 < 20
