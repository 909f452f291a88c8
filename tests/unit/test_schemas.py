"""The JSON Schemas in schemas/ (draft 2020-12) against the request fixtures
and the JSON examples in the docs.

- every tests/fixtures/requests/valid case passes request-v1;
- every invalid case fails it, each error pointing at the field its error
  file names, except the cases in NOT_IN_SCHEMA (reasons a schema cannot
  express), which must still pass it, so the table stays true;
- every ```json block of README.md and docs/*.md is a request, a result or
  a retry record (told apart by its keys) and passes its schema;
- a few result and retry records, valid and not, pin the rules of those
  schemas.

Run by ctest (label unit, so by every tests/run mode that runs unit tests):
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/unit/test_schemas.py
Needs python3-jsonschema (4.10 or newer) and python3-pytest.
"""
import copy
import datetime
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
FIXTURES = REPO / "tests" / "fixtures" / "requests"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# Invalid request cases whose reason no JSON Schema can express, and why.
# Each must still pass the schema (or not be JSON at all).
NOT_IN_SCHEMA = {
    "malformed_json": "not JSON: there is no instance to validate",
    "duplicate_key": "a schema sees the parsed object, where one of the two keys is gone",
    "oversize_request_rejected_before_parsing":
        "request.max.bytes is a worker setting, on the record's bytes",
    "too_many_recipients": "request.max.recipients is a worker setting",
}

# Invalid cases whose error file holds only part of the reason, without the
# field: the field (as a path) that the reason names.
FIELD_NOT_IN_ERROR = {
    "header_name_too_long": ["headers"],
}


def is_date_time(instance):
    """RFC 3339 date-time as the worker reads it: a real date, a time zone."""
    if not isinstance(instance, str):
        return True
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
                     r"(?:[Zz]|[+-](\d{2}):(\d{2}))", instance, re.ASCII)
    if not m:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    off_hour, off_minute = (int(g or 0) for g in m.groups()[6:])
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return hour <= 23 and minute <= 59 and second <= 60 and off_hour <= 23 and off_minute <= 59


def validator(name):
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    # Python's jsonschema checks date-time only with rfc3339-validator, which
    # Debian does not package: use the worker's rule.
    checker = FormatChecker()
    checker.checks("date-time")(is_date_time)
    return Draft202012Validator(schema, format_checker=checker)


REQUEST = validator("request-v1.schema.json")
RESULT = validator("result-v1.schema.json")
RETRY = validator("retry-v1.schema.json")


def cases(group):
    return sorted(p.name for p in (FIXTURES / group).iterdir() if p.is_dir())


def load_json(path):
    """@returns the parsed value, or raises ValueError when it is not JSON."""
    return json.loads(path.read_bytes().decode("utf-8"))


def describe(errors):
    return "\n".join(f"  at {list(e.absolute_path)}: {e.message[:200]}" for e in errors)


def fixture_path(case, reason):
    """The field an error file names, as a path: "attachments[0].filename"
    gives ["attachments", 0, "filename"], "request: ..." gives []."""
    if case in FIELD_NOT_IN_ERROR:
        return FIELD_NOT_IN_ERROR[case]
    m = re.fullmatch(r'unknown field "(.*)"', reason)
    if m:
        return [m[1]]
    field, sep, _ = reason.partition(": ")
    assert sep, f"{case}: the error names no field; add the case to FIELD_NOT_IN_ERROR"
    if field == "request":
        return []
    m = re.fullmatch(r"([a-z_]+)(?:\[(\d+)\])?(?:\.(.+))?", field)
    assert m, f"{case}: cannot read the field of {reason!r}"
    return [m[1]] + ([int(m[2])] if m[2] else []) + ([m[3]] if m[3] else [])


def error_locations(err):
    """The instance paths a validation error is about: a missing (required,
    dependentRequired) or unknown property counts as the path to it; anyOf
    counts each alternative."""
    path = list(err.absolute_path)
    if err.validator == "required" and isinstance(err.instance, dict):
        return [path + [p] for p in err.validator_value if p not in err.instance]
    if err.validator == "dependentRequired" and isinstance(err.instance, dict):
        return [path + [d] for p, deps in err.validator_value.items() if p in err.instance
                for d in deps if d not in err.instance]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = err.schema.get("properties", {})
        return [path + [k] for k in err.instance if k not in known]
    if err.validator in ("anyOf", "oneOf") and err.context:
        return [loc for sub in err.context for loc in error_locations(sub)] or [path]
    return [path]


def agrees(location, expected):
    """Same first field, and one path leads to the other."""
    n = min(len(location), len(expected))
    return location[:1] == expected[:1] and location[:n] == expected[:n]


# --- the schemas themselves ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMAS.glob("*.schema.json")))
def test_schema_is_valid_draft_2020_12_with_its_id(name):
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    assert schema["$schema"] == DRAFT
    assert schema["$id"].endswith("/schemas/" + name)
    assert schema.get("title") and schema.get("description")
    Draft202012Validator.check_schema(schema)


# --- requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("valid"))
def test_valid_request_fixture_passes(case):
    errors = list(REQUEST.iter_errors(load_json(FIXTURES / "valid" / case / "input.json")))
    assert not errors, f"{case} is valid for the worker but not for the schema:\n{describe(errors)}"


@pytest.mark.parametrize("case", cases("invalid"))
def test_invalid_request_fixture_fails_at_its_field(case):
    folder = FIXTURES / "invalid" / case
    reason = (folder / "error").read_text(encoding="utf-8").strip()
    if case in NOT_IN_SCHEMA:
        try:
            instance = load_json(folder / "input.json")
        except ValueError:
            return
        errors = list(REQUEST.iter_errors(instance))
        assert not errors, (f"{case} is in NOT_IN_SCHEMA but the schema refuses it; "
                            f"remove it from the table:\n{describe(errors)}")
        return
    instance = load_json(folder / "input.json")
    errors = list(REQUEST.iter_errors(instance))
    assert errors, f"{case} ({reason}) passes the schema"
    expected = fixture_path(case, reason)
    for err in errors:
        locations = error_locations(err)
        assert any(agrees(loc, expected) for loc in locations), (
            f"{case}: the worker's reason is {reason!r} (field {expected}); "
            f"a schema error points at {locations}:\n{describe([err])}")


def test_not_in_schema_tables_name_invalid_fixtures():
    invalid = set(cases("invalid"))
    assert set(NOT_IN_SCHEMA) <= invalid
    assert set(FIELD_NOT_IN_ERROR) <= invalid


# --- the docs' examples --------------------------------------------------------------------

def doc_examples():
    """(file:line, value) for each ```json block of README.md and docs/*.md."""
    found = []
    for path in [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^```json\n(.*?)^```", text, re.M | re.S):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{path.relative_to(REPO)}:{line}", m[1]))
    return found


def kind_of(value):
    """request, result or retry, from the keys only those have."""
    if not isinstance(value, dict):
        return None
    if "status" in value:
        return "result"
    if "due_ms" in value and "request" in value:
        return "retry"
    if "from" in value:
        return "request"
    return None


DOC_EXAMPLES = doc_examples()


@pytest.mark.parametrize("where,text", DOC_EXAMPLES, ids=[w for w, _ in DOC_EXAMPLES])
def test_doc_example_passes_its_schema(where, text):
    value = json.loads(text)
    kind = kind_of(value)
    assert kind, f"{where}: a JSON example that is no request, result or retry record"
    errors = list({"request": REQUEST, "result": RESULT, "retry": RETRY}[kind].iter_errors(value))
    assert not errors, f"{where}: the {kind} example does not pass its schema:\n{describe(errors)}"


def test_docs_show_a_request_and_a_result():
    kinds = {kind_of(json.loads(text)) for _, text in DOC_EXAMPLES}
    assert {"request", "result"} <= kinds


# --- results and retry records -------------------------------------------------------------

SENT = {"v": 1, "id": "7f3c", "status": "sent", "delivered": "all", "attempts": 1,
        "smtp_code": 250, "smtp_reply": "2.0.0 Ok: queued as 4XyZ",
        "message_id": "<7f3c@shop.example>", "relay": "smtp://relay:587", "error": None,
        "source": {"topic": "email.requests", "partition": 3, "offset": 1842},
        "received_at": "2026-11-28T10:00:00.120Z", "completed_at": "2026-11-28T10:00:00.204Z",
        "latency_ms": 84, "worker": "host-4242", "metadata": {"order": 1234}}


def result(**changes):
    r = copy.deepcopy(SENT)
    for key, value in changes.items():
        if value is KeyError:
            del r[key]
        else:
            r[key] = value
    return r


ENTRY_SENT = {"recipient": "ann@example.com", "status": "sent", "smtp_code": 250,
              "smtp_reply": "2.1.5 Ok"}
ENTRY_FAILED = {"recipient": "bob@example.com", "status": "failed", "smtp_code": 550,
                "smtp_reply": "5.1.1 no such user"}

VALID_RESULTS = {
    "rejected_without_id": result(id=None, status="rejected", delivered="none", attempts=0,
                                  smtp_code=None, smtp_reply=None, message_id=None,
                                  error="request: invalid JSON at line 1 column 2: x",
                                  metadata=None),
    "rejected_id_from_key": result(id="k-1", id_from="key", status="rejected",
                                   delivered="none", attempts=0, smtp_code=None,
                                   smtp_reply=None, message_id=None,
                                   error="request: 20000 bytes exceeds request.max.bytes (16384)"),
    "sent_to_some": result(delivered="some", recipients=[ENTRY_SENT, ENTRY_FAILED],
                           failed_recipients=[ENTRY_FAILED]),
    "expired_part_way": result(status="expired", delivered="some", error="deadline passed before sending",
                               recipients=[ENTRY_SENT, dict(ENTRY_FAILED, status="expired",
                                                            smtp_code=None, smtp_reply=None)]),
    "failed_smtputf8": result(status="failed", delivered="none", smtp_code=None,
                              smtp_reply="relay does not offer SMTPUTF8, needed for a UTF-8 address",
                              error="relay does not offer SMTPUTF8, needed for a UTF-8 address"),
    "duplicate": result(attempts=0, duplicate=True,
                        duplicate_of={"topic": "email.requests", "partition": 1, "offset": 7}),
    "truncated": result(metadata=None, truncated=True),
    "unknown_field_ignored": result(future_field="readers ignore it"),
}

INVALID_RESULTS = {  # record, the field the error is about
    "status_unknown": (result(status="bounced"), "status"),
    "delivered_unknown": (result(delivered="most"), "delivered"),
    "attempts_negative": (result(attempts=-1), "attempts"),
    "smtp_code_out_of_range": (result(smtp_code=99), "smtp_code"),
    "smtp_code_as_string": (result(smtp_code="250"), "smtp_code"),
    "received_at_not_utc_ms": (result(received_at="2026-11-28T10:00:00Z"), "received_at"),
    "completed_at_impossible": (result(completed_at="2026-02-30T10:00:00.000Z"), "completed_at"),
    "source_without_offset": (result(source={"topic": "t", "partition": 0}), "source"),
    "metadata_missing": (result(metadata=KeyError), "metadata"),
    "id_from_without_id": (result(id=None, id_from="key"), "id"),
    "rejected_with_attempts": (result(status="rejected", delivered="none", attempts=1,
                                      error="to[0]: empty address"), "attempts"),
    "failed_recipients_not_sent": (result(status="failed", delivered="none",
                                          failed_recipients=[ENTRY_FAILED]), "status"),
    "duplicate_without_duplicate_of": (result(attempts=0, duplicate=True), "duplicate_of"),
    "truncated_with_metadata": (result(truncated=True), "metadata"),
    "recipient_entry_without_status": (result(recipients=[{"recipient": "a@b.c", "smtp_code": None,
                                                           "smtp_reply": None}]), "recipients"),
}


@pytest.mark.parametrize("name", sorted(VALID_RESULTS))
def test_result_record_passes(name):
    errors = list(RESULT.iter_errors(VALID_RESULTS[name]))
    assert not errors, describe(errors)


@pytest.mark.parametrize("name", sorted(INVALID_RESULTS))
def test_result_record_fails_at_its_field(name):
    record, field = INVALID_RESULTS[name]
    errors = list(RESULT.iter_errors(record))
    assert errors, f"{name} passes the result schema"
    assert any(any(loc[:1] == [field] for loc in error_locations(e)) for e in errors), (
        f"{name}: no error about {field}:\n{describe(errors)}")


RETRY_RECORD = {"v": 1, "id": "7f3c", "request": "{}", "attempts": 3, "due_ms": 1795830000000,
                "first_received_ms": 1795829990000, "request_ts_ms": 1795829989000,
                "source": {"topic": "email.requests", "partition": 3, "offset": 1842},
                "last_smtp_code": 451, "last_smtp_reply": "4.3.0 try again later",
                "recipients": [{"index": 0, "recipient": "ann@example.com", "status": "sent",
                                "smtp_code": 250, "smtp_reply": "ok"}]}


@pytest.mark.parametrize("changes,field", [
    ({"attempts": 1001}, "attempts"),
    ({"source": {"topic": "t", "partition": -1, "offset": 0}}, "source"),
    ({"recipients": [{"index": 0, "recipient": "a@b.c", "status": "expired"}]}, "recipients"),
    ({"due_ms": None}, "due_ms"),
    ({"last_smtp_code": 99}, "last_smtp_code"),
], ids=["attempts_over_1000", "negative_partition", "entry_status", "due_ms_null", "code_99"])
def test_retry_record_rules(changes, field):
    assert not list(RETRY.iter_errors(RETRY_RECORD))
    record = dict(RETRY_RECORD, **changes)
    errors = list(RETRY.iter_errors(record))
    assert errors and all(list(e.absolute_path)[:1] == [field] for e in errors), describe(errors)
