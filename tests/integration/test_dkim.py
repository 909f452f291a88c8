"""DKIM signing (dkim.key.*): messages as the SMTP server received them carry one
signature per key of the From domain, rsa-sha256 and ed25519-sha256, and each verifies
with dkimpy (Debian's python3-dkim, an implementation other than the worker's) against
the DNS record the worker logged at start. Mail from a domain without a key goes
unsigned; the private keys never appear in the log."""
import base64
import re
import subprocess
import urllib.request

import dkim
import pytest

from harness import Worker, free_port, make_request
from kmstack import make_tmpdir

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]

DOMAIN = "shop.example"
OTHER = "news.example"


def genkey(path, algorithm):
    argv = ["openssl", "genpkey", "-algorithm", algorithm, "-out", str(path)]
    if algorithm == "RSA":
        argv[4:4] = ["-pkeyopt", "rsa_keygen_bits:2048"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return path


def dkim_keys(*keys):
    """dkim.key.* settings for (name, domain, selector, file) tuples."""
    cfg = {}
    for name, domain, selector, path in keys:
        cfg[f"dkim.key.{name}.domain"] = domain
        cfg[f"dkim.key.{name}.selector"] = selector
        cfg[f"dkim.key.{name}.file"] = str(path)
    return cfg


def dns_records(log):
    """<selector>._domainkey.<domain> -> TXT content, from the worker's start-up lines."""
    out = {}
    for m in re.finditer(r'msg="dkim key" key=(\S+) .*?dns_name=(\S+) dns_txt="([^"]+)"',
                         log):
        out[m.group(2)] = m.group(3).encode()
    return out


def verify_each(raw, records):
    """Verifies every DKIM-Signature of @raw on its own: a list of (d=, s=, a=, ok)."""
    d = dkim.DKIM(raw)

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.rstrip("."))

    out = []
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    for i, sig in enumerate(sigs):
        tags = dict(re.findall(rb"(\w+)=([^;]*)", re.sub(rb"\s+", b"", sig)))
        try:
            ok = dkim.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc)
        except dkim.DKIMException:  # e.g. "body hash mismatch"
            ok = False
        out.append((tags[b"d"].decode(), tags[b"s"].decode(), tags[b"a"].decode(), ok))
    return out


def metric(port, name, key):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^" + name + r'\{key="' + key + r'"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def requests():
    """Requests from the signed domain with what makes canonicalisation hard."""
    att = base64.b64encode(bytes(range(256)) * 40).decode()
    long_value = " ".join(f"word{i}" for i in range(60))
    return [
        make_request(0, subject="Ünïcödé subject — 日本語 ✓",
                     **{"from": f"Boutique Zoë <no-reply@{DOMAIN}>",
                        "to": ["Jürgen Groß <jurgen@example.com>"]}),
        make_request(1, headers={"X-Long": long_value, "List-Unsubscribe":
                                 "<https://shop.example/u/" + "x" * 120 + ">"}),
        make_request(2, text="Plain part\n", html="<p>HTML <b>part</b></p>\n",
                     attachments=[{"filename": "data.bin",
                                   "content_type": "application/octet-stream",
                                   "content_base64": att},
                                  {"filename": "notes.txt", "content_type": "text/plain",
                                   "content_base64": base64.b64encode(
                                       b"line\n.dot line\n").decode()}]),
        make_request(3, text=".starts with a dot\n..two dots\n.\nend  \t \n\n\n"),
        make_request(4, text=" "),
        make_request(5, text="Grüße aus Köln\n.Punkt am Anfang ß\n"),
        # the domain in another case is the same domain
        make_request(6, **{"from": f"no-reply@{DOMAIN.upper()}"}),
    ]


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_both_algorithms_sign_and_verify_with_dkimpy(kafka, topics, capture_server,
                                                     worker, chunking):
    """Sent with DATA (dot-stuffed) or with BDAT (as built): the same signatures."""
    keys = make_tmpdir("dkim-keys")
    rsa = genkey(keys / "rsa.pem", "RSA")
    ed = genkey(keys / "ed.pem", "ED25519")
    other = genkey(keys / "other.pem", "ED25519")
    server = capture_server(extra=["--chunking"] if chunking else [])
    mport = free_port()
    signed = requests()
    unsigned = [make_request(10, **{"from": f"Other <a@{OTHER}.org>"}),
                make_request(11, **{"from": "a@sub.shop.example"})]
    kafka.produce(topics.requests, signed + unsigned)
    cfg = Worker.base_config(kafka, topics, server.url, smtp_starttls="off",
                             metrics_listen=f"127.0.0.1:{mport}")
    cfg.update(dkim_keys(("shop-rsa", DOMAIN, "rsa2026", rsa),
                         ("shop-ed", DOMAIN, "ed2026", ed),
                         ("news", OTHER, "n1", other)))
    w = worker(cfg)
    results = kafka.results(topics.results, wait=len(signed) + len(unsigned), timeout=60)
    assert {r["status"] for r in results} == {"sent"}, results

    records = dns_records(w.log())
    assert set(records) == {f"rsa2026._domainkey.{DOMAIN}", f"ed2026._domainkey.{DOMAIN}",
                            f"n1._domainkey.{OTHER}"}, w.log()
    assert records[f"rsa2026._domainkey.{DOMAIN}"].startswith(b"v=DKIM1; k=rsa; p=")
    assert records[f"ed2026._domainkey.{DOMAIN}"].startswith(b"v=DKIM1; k=ed25519; p=")
    assert "key=shop-rsa" in w.log() and "bits=2048" in w.log()

    by_mid = {m.msg["Message-ID"]: m for m in server.messages()}
    assert {m.meta["bdat"] for m in by_mid.values()} == {chunking}
    for req in signed:
        m = by_mid[f"<{req['id']}@{req['from'].rstrip('>').rsplit('@', 1)[1]}>"]
        got = verify_each(m.raw, records)
        assert sorted(got) == [(DOMAIN, "ed2026", "ed25519-sha256", True),
                               (DOMAIN, "rsa2026", "rsa-sha256", True)], (got, m.raw)
        assert m.raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        # dkim.verify() (the first signature) agrees
        assert dkim.verify(m.raw, dnsfunc=lambda n, timeout=5: records.get(
            (n.decode() if isinstance(n, bytes) else n).rstrip(".")))

        # a change to the body or to a signed field breaks both signatures
        head, body = m.raw.split(b"\r\n\r\n", 1)
        changed_body = head + b"\r\n\r\n" + body + b"added\r\n"
        assert [ok for *_, ok in verify_each(changed_body, records)] == [False, False]
        changed_subject = m.raw.replace(b"\r\nSubject: ", b"\r\nSubject: Re: ", 1)
        assert changed_subject != m.raw
        assert [ok for *_, ok in verify_each(changed_subject, records)] == [False, False]

    for req in unsigned:
        domain = req["from"].rstrip(">").rsplit("@", 1)[1]
        m = by_mid[f"<{req['id']}@{domain}>"]
        assert b"DKIM-Signature" not in m.raw.split(b"\r\n\r\n", 1)[0], m.raw[:400]

    assert metric(mport, "kafka_mailer_dkim_signed_total", "shop-rsa") == len(signed)
    assert metric(mport, "kafka_mailer_dkim_signed_total", "shop-ed") == len(signed)
    assert metric(mport, "kafka_mailer_dkim_signed_total", "news") == 0
    assert metric(mport, "kafka_mailer_dkim_failures_total", "shop-rsa") == 0

    # the private keys are never logged, the public ones are
    log = w.log()
    for pem in (rsa, ed, other):
        lines = [ln for ln in pem.read_text().splitlines() if not ln.startswith("-----")]
        assert lines and not any(ln in log for ln in lines), pem
    assert "PRIVATE KEY" not in log


def test_a_key_file_that_cannot_be_read_stops_the_start(kafka, topics, capture_server,
                                                        worker):
    keys = make_tmpdir("dkim-keys")
    bad = keys / "bad.pem"
    secret = "MC4CAQAwBQYDK2VwBCIEIJustNotAKeyButLooksSecret0000000000000"
    bad.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    server = capture_server()
    cfg = Worker.base_config(kafka, topics, server.url, smtp_starttls="off")
    cfg.update(dkim_keys(("main", DOMAIN, "s1", bad)))
    w = worker(cfg)
    assert w.wait(timeout=30) != 0
    log = w.log()
    assert "dkim.key.main:" in log and str(bad) in log, log
    assert secret not in log
