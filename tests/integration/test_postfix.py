"""Against Postfix itself, a real MTA: a private instance (kmstack.PostfixServer) whose
smtpd offers PIPELINING and CHUNKING takes the worker's mail and relays it to a
capture-server, so that what arrives is counted by Message-ID at the far end, and
Postfix's own log says which commands it was sent."""
import base64

import pytest

from harness import Worker, final_by_id, make_request, wait_for

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]


def requests(n):
    """n requests of what a message may hold: lines that start with a dot, a body past
    16 KB, non-ASCII text and headers, HTML, an attachment."""
    big = "".join(f".line {j} of a long body\n" if j % 7 == 0 else f"line {j}\n"
                  for j in range(3000))
    out = []
    for i in range(n):
        req = make_request(i, id=f"pf-{i:04d}", metadata={"i": i})
        if i % 3 == 0:
            req["text"] = f".starts with a dot {i}\n..two dots\n.\nend\n"
        if i % 5 == 0:
            req["subject"] = f"Grüße {i} — 日本語"
            req["text"] = f"Grüße aus Köln {i}\n.Punkt am Anfang ß\n"
        if i % 7 == 0:
            req["html"] = f"<p>Hello <b>{i}</b></p>"
        if i % 11 == 0:
            req["attachments"] = [{"filename": f"r-{i}.bin",
                                   "content_type": "application/octet-stream",
                                   "content_base64": base64.b64encode(
                                       bytes(range(256)) * 8).decode()}]
        if i % 40 == 1:
            req["text"] = big
        out.append(req)
    return out


def test_postfix_takes_every_message_with_bdat_and_relays_each_once_as_built(
        kafka, topics, capture_server, postfix, worker):
    """Postfix offers CHUNKING: every message goes with BDAT (Postfix counts no DATA),
    each arrives once beyond it with its body as requested; a recipient Postfix refuses
    fails its request at once (550, no retry) and the session goes on; every offset is
    committed."""
    far = capture_server()
    mta = postfix(relay_port=far.port, refuse_domains=["refused.example"])
    reqs = requests(200)
    refused = [make_request(i, id=f"pf-refused-{i}", to=[f"x{i}@refused.example"])
               for i in range(10)]
    kafka.produce(topics.requests, reqs[:100] + refused + reqs[100:])
    w = worker(Worker.base_config(kafka, topics, mta.url, smtp_starttls="off",
                                  inflight_max=100, smtp_sessions_max=8))

    final = final_by_id(kafka.results(topics.results, wait=210, timeout=180))
    assert len(final) == 210
    for req in refused:
        r = final[req["id"]]
        assert (r["status"], r["smtp_code"], r["attempts"]) == ("failed", 550, 1), r
        assert "refused by the test" in r["smtp_reply"], r
    for req in reqs:
        r = final[req["id"]]
        assert (r["status"], r["smtp_code"], r["attempts"]) == ("sent", 250, 1), r
        assert "queued as" in r["smtp_reply"], r

    messages = far.wait_messages(200, timeout=60)
    by_mid = {}
    for m in messages:
        mid = m.msg["Message-ID"]
        assert mid not in by_mid, f"{mid} arrived twice"
        by_mid[mid] = m
        assert "by mta.localhost (Postfix)" in m.msg["Received"], m.msg["Received"]
    assert len(by_mid) == 200
    for req in reqs:
        m = by_mid[final[req["id"]]["message_id"]]
        assert m.msg["Subject"] == req["subject"]
        text = m.msg.get_body(preferencelist=("plain",))
        assert text.get_content().replace("\r\n", "\n") == req["text"], req["id"]
        if "attachments" in req:
            (att,) = list(m.msg.iter_attachments())
            assert att.get_payload(decode=True) == base64.b64decode(
                req["attachments"][0]["content_base64"])

    kafka.wait_committed(topics.group, topics.requests, timeout=30)
    # Postfix counts a session's commands when it ends: the worker's end closes them
    w.stop(timeout=30)
    cmds = wait_for(lambda: (c := mta.smtpd_commands()).get("bdat", 0) >= 200 and c,
                    10, "Postfix's count of BDAT commands")
    assert cmds.get("bdat") == 200 and cmds.get("data", 0) == 0, cmds


def test_postfix_gets_data_when_chunking_is_off(kafka, topics, capture_server, postfix,
                                                worker):
    """smtp.chunking=false: DATA, dot-stuffed, even though Postfix offers CHUNKING; the
    same bodies arrive."""
    far = capture_server()
    mta = postfix(relay_port=far.port)
    reqs = requests(40)
    kafka.produce(topics.requests, reqs)
    w = worker(Worker.base_config(kafka, topics, mta.url, smtp_starttls="off",
                                  smtp_chunking="false"))
    final = final_by_id(kafka.results(topics.results, wait=40, timeout=120))
    assert {r["status"] for r in final.values()} == {"sent"}
    by_mid = {m.msg["Message-ID"]: m for m in far.wait_messages(40, timeout=60)}
    for req in reqs:
        m = by_mid[final[req["id"]]["message_id"]]
        text = m.msg.get_body(preferencelist=("plain",))
        assert text.get_content().replace("\r\n", "\n") == req["text"], req["id"]
    w.stop(timeout=30)
    cmds = wait_for(lambda: (c := mta.smtpd_commands()).get("data", 0) >= 40 and c,
                    10, "Postfix's count of DATA commands")
    assert cmds.get("data") == 40 and cmds.get("bdat", 0) == 0, cmds
