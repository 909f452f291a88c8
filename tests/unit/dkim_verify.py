#!/usr/bin/python3
"""Verifies a DKIM signature with dkimpy (Debian's python3-dkim), for
tests/unit/test_dkim.c: an implementation of RFC 6376 and RFC 8463 other
than the one under test.

    dkim_verify.py MESSAGE RECORD NAME

MESSAGE: a file holding the signed message (CRLF line ends). RECORD: a file
holding the key record ("v=DKIM1; k=...; p=..."), served as the TXT record
of the DNS name NAME (selector._domainkey.domain) and of no other name. The
first DKIM-Signature field of the message is verified. Exit status: 0 when
it verifies, 1 when not (the reason on stderr), 2 on a usage error.
"""
import logging
import sys

import dkim


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as f:
        message = f.read()
    with open(sys.argv[2], "rb") as f:
        record = f.read().strip()
    name = sys.argv[3].rstrip(".")
    asked = []

    def dnsfunc(qname, timeout=5):
        if isinstance(qname, bytes):
            qname = qname.decode("ascii")
        asked.append(qname)
        return record if qname.rstrip(".") == name else None

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="dkim_verify: %(message)s")
    try:
        d = dkim.DKIM(message, logger=logging.getLogger("dkim_verify"))
        ok = d.verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        print(f"dkim_verify: {e}", file=sys.stderr)
        ok = False
    if not ok:
        print(f"dkim_verify: not verified (key asked for: {asked})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
