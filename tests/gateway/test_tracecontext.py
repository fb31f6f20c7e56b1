"""A caller's W3C ``traceparent`` gives its request the trace id that its ledger row and audit record
carry; without one, or with a malformed one, every request still gets a trace id of its own."""

from __future__ import annotations

import httpx
import pytest

from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.tracecontext import trace_id_from
from tests.gateway.conftest import write_toml

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (PARENT, TRACE),
        (f" {PARENT} ", TRACE),
        (None, None),
        ("", None),
        (PARENT.upper(), None),  # the format is lower case
        (f"01-{TRACE}-00f067aa0ba902b7-01", None),  # another version: not read
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero ids are invalid
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),
        (f"00-{TRACE[:-1]}g-00f067aa0ba902b7-01", None),
        ("x" * 10_000, None),
    ],
)
def test_only_a_valid_traceparent_gives_its_trace_id(header, expected):
    assert trace_id_from(header) == expected


def test_the_ledger_and_the_audit_log_carry_the_callers_trace_id(tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "providers.echo": {},
            "gateway.http": {"port": 0},
            "gateway.audit": {"path": str(audit), "fsync": False},
        },
    )
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    with start_gateway(config) as gateway:
        url = gateway.url("http") + "/v1/chat/completions"
        traced = httpx.post(url, json=body, headers={"traceparent": PARENT}, timeout=30)
        untraced = httpx.post(url, json=body, headers={"traceparent": "garbage"}, timeout=30)
        assert traced.status_code == untraced.status_code == 200
    rows = Ledger(tmp_path / "ledger.sqlite").rows()
    ids = [row["trace_id"] for row in rows]
    assert ids[0] == TRACE and len(ids[1]) == 32 and ids[1] != TRACE  # a malformed header: an id of its own
    assert TRACE in audit.read_text()
