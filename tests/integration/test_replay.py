"""mailer-replay: selects results, reads back their requests and republishes them under
new ids that link to the old ones; dry run by default; past retention reported by id."""

import ctypes
import subprocess

import pytest

from harness import Topics, Worker, binary, fast_group, final_by_id, make_request, run

pytestmark = [pytest.mark.needs_worker, pytest.mark.needs_tools]


def cfg(kafka, topics, url):
    return Worker.base_config(kafka, topics, url, smtp_starttls="off", **fast_group())


def replay(kafka, topics, *args, timeout=60):
    return run([binary("mailer-replay"), "-b", kafka.bootstrap, "--results",
                topics.results, "--requests", topics.requests, "--list", "1000", *args],
               timeout=timeout)


def lines(r, kind):
    """{id: fields} of the report lines of @kind ("replay", "past_retention", ...)."""
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith(kind + " "):
            head = line.split(" reason: ")[0]
            f = dict(x.split("=", 1) for x in head.split()[1:])
            out[f["id"]] = f
    return out


def delete_records(bootstrap, topic, partition, before):
    """Deletes the records of topic/partition below offset @before (librdkafka's
    DeleteRecords through ctypes, from the library the tools link)."""
    out = subprocess.run(["ldd", str(binary("mailer-replay"))], capture_output=True,
                         text=True).stdout
    path = next(x.split("=>")[1].split()[0] for x in out.splitlines() if "librdkafka" in x)
    rk_lib = ctypes.CDLL(path)
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    rk_lib.rd_kafka_conf_new.restype = vp
    rk_lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, cp, ctypes.c_size_t]
    rk_lib.rd_kafka_new.restype = vp
    rk_lib.rd_kafka_new.argtypes = [ctypes.c_int, vp, cp, ctypes.c_size_t]
    rk_lib.rd_kafka_topic_partition_list_new.restype = vp
    rk_lib.rd_kafka_topic_partition_list_add.restype = ctypes.POINTER(TopicPartition)
    rk_lib.rd_kafka_topic_partition_list_add.argtypes = [vp, cp, ctypes.c_int32]
    rk_lib.rd_kafka_DeleteRecords_new.restype = vp
    rk_lib.rd_kafka_DeleteRecords_new.argtypes = [vp]
    rk_lib.rd_kafka_queue_new.restype = vp
    rk_lib.rd_kafka_queue_new.argtypes = [vp]
    rk_lib.rd_kafka_DeleteRecords.argtypes = [vp, ctypes.POINTER(vp), ctypes.c_size_t,
                                              vp, vp]
    rk_lib.rd_kafka_queue_poll.restype = vp
    rk_lib.rd_kafka_queue_poll.argtypes = [vp, ctypes.c_int]
    rk_lib.rd_kafka_event_error.argtypes = [vp]
    rk_lib.rd_kafka_event_destroy.argtypes = [vp]
    rk_lib.rd_kafka_queue_destroy.argtypes = [vp]
    rk_lib.rd_kafka_destroy.argtypes = [vp]
    err = ctypes.create_string_buffer(512)
    conf = rk_lib.rd_kafka_conf_new()
    assert rk_lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(),
                                    err, 512) == 0, err.value
    rk = rk_lib.rd_kafka_new(0, conf, err, 512)
    assert rk, err.value
    tpl = rk_lib.rd_kafka_topic_partition_list_new(1)
    rk_lib.rd_kafka_topic_partition_list_add(tpl, topic.encode(), partition)[0].offset = before
    dr = vp(rk_lib.rd_kafka_DeleteRecords_new(tpl))
    q = rk_lib.rd_kafka_queue_new(rk)
    rk_lib.rd_kafka_DeleteRecords(rk, ctypes.byref(dr), 1, None, q)
    ev = rk_lib.rd_kafka_queue_poll(q, 30000)
    assert ev, "no DeleteRecords result"
    assert rk_lib.rd_kafka_event_error(ev) == 0
    rk_lib.rd_kafka_event_destroy(ev)
    rk_lib.rd_kafka_queue_destroy(q)
    rk_lib.rd_kafka_destroy(rk)


class TopicPartition(ctypes.Structure):
    _fields_ = [("topic", ctypes.c_char_p), ("partition", ctypes.c_int32),
                ("offset", ctypes.c_int64)]


def failing_run(kafka, capture_server, worker):
    """One partition; ok-0..2 sent, bad-0..2 failed (550), old-0..1 expired."""
    topics = Topics.new(partitions=1).create(kafka)
    server = capture_server(reject_rcpt="bad")
    reqs = ([make_request(i, id=f"ok-{i}") for i in range(3)]
            + [make_request(i, id=f"bad-{i}", to=[f"bad{i}@example.com"],
                            metadata={"order": i}) for i in range(3)]
            + [make_request(i, id=f"old-{i}", deadline="2001-01-01T00:00:00Z")
               for i in range(2)])
    kafka.produce(topics.requests, reqs)
    w = worker(cfg(kafka, topics, server.url))
    final = final_by_id(kafka.results(topics.results, wait=len(reqs), timeout=90))
    assert {i: r["status"] for i, r in final.items()} == {
        **{f"ok-{i}": "sent" for i in range(3)},
        **{f"bad-{i}": "failed" for i in range(3)},
        **{f"old-{i}": "expired" for i in range(2)}}
    return topics, w, reqs


def test_replay_dry_run_then_publish_links_new_ids_and_sends_after_the_fix(
        kafka, capture_server, worker):
    topics, w, reqs = failing_run(kafka, capture_server, worker)
    before = kafka.count(topics.requests)

    r = replay(kafka, topics)
    assert r.returncode == 0, r.stderr
    assert set(lines(r, "replay")) == {"bad-0", "bad-1", "bad-2"}
    assert lines(r, "replay")["bad-1"]["new_id"] == "bad-1.r1"
    assert "selected=3 to_publish=3 " in r.stdout
    assert "dry run: nothing published" in r.stderr
    assert kafka.count(topics.requests) == before

    r = replay(kafka, topics, "--status", "failed,expired")
    assert set(lines(r, "replay")) == {"bad-0", "bad-1", "bad-2", "old-0", "old-1"}
    r = replay(kafka, topics, "--error-contains", "deadline passed", "--status",
               "failed,expired")
    assert set(lines(r, "replay")) == {"old-0", "old-1"}
    r = replay(kafka, topics, "--id", "bad-2", "--id", "ok-1")
    assert set(lines(r, "replay")) == {"bad-2"}
    assert r.returncode == 4 and "--id ok-1:" in r.stderr
    r = replay(kafka, topics, "--until", "2001-01-01")
    assert r.returncode == 0 and "selected=0 " in r.stdout
    r = replay(kafka, topics, "--since", "2001-01-01T00:00:00Z")
    assert set(lines(r, "replay")) == {"bad-0", "bad-1", "bad-2"}

    # The fix: a relay that takes every recipient.
    w.stop(timeout=30)
    fixed = capture_server()
    worker(cfg(kafka, topics, fixed.url))
    r = replay(kafka, topics, "--publish", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "published=3 failed=0" in r.stdout
    assert kafka.count(topics.requests) == before + 3
    final = final_by_id(kafka.results(topics.results, wait=len(reqs) + 3, timeout=90))
    for i in range(3):
        new = final[f"bad-{i}.r1"]
        assert new["status"] == "sent", new
        assert new["metadata"] == {"order": i, "replay_of": f"bad-{i}"}
        assert new["source"]["topic"] == topics.requests
    got = {m.msg["Subject"] for m in fixed.wait_messages(3, timeout=30)}
    assert got == {f"Test message {i}" for i in range(3)}

    # Replayed already: the old ids are superseded, nothing left to publish.
    r = replay(kafka, topics)
    assert r.returncode == 0, r.stderr
    assert "selected=3 to_publish=0 superseded=3 " in r.stdout
    assert set(lines(r, "superseded")) == {"bad-0", "bad-1", "bad-2"}
    assert "replayed already as bad-1.r1" in r.stdout


def test_replay_reports_requests_past_retention_by_id(kafka, capture_server, worker):
    topics, w, reqs = failing_run(kafka, capture_server, worker)
    # bad-0 is at offset 3, bad-1 at 4: delete the records below 4.
    delete_records(kafka.bootstrap, topics.requests, 0, 4)
    r = replay(kafka, topics)
    assert r.returncode == 4, r.stdout + r.stderr
    assert set(lines(r, "past_retention")) == {"bad-0"}
    assert set(lines(r, "replay")) == {"bad-1", "bad-2"}
    assert "past_retention=1 " in r.stdout
    assert "1 selected requests cannot be replayed" in r.stderr
    before = kafka.count(topics.requests)
    r = replay(kafka, topics, "--publish", "--yes")
    assert r.returncode == 4 and "published=2 failed=0" in r.stdout
    assert kafka.count(topics.requests) == before + 2


@pytest.mark.parametrize("args,message", [
    ([], "--results and --requests are required"),
    (["--status", "lost"], "--status lost: expected"),
    (["--since", "yesterday"], "--since yesterday: expected an RFC 3339"),
    (["--id-suffix", "r2"], "--id-suffix r2: expected"),
    (["--yes"], "--yes only goes with --publish"),
    (["--publish"], "add --yes to publish without asking"),
])
def test_replay_bad_arguments_are_refused_clearly(args, message):
    base = [] if not args and message.startswith("--results") else [
        "--results", "res-x", "--requests", "req-x"]
    r = run([binary("mailer-replay"), *base, *args], input=b"", timeout=30)
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
