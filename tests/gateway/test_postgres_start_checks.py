"""What a gateway with a PostgreSQL ledger or audit log says at start about mistakes an operator can
make there: a libpq option's value misspelt (refused like a misspelt option name)."""

from __future__ import annotations

import pytest

from gtl_nb.engine.stores.postgres_pool import parse_postgres_url
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.errors import ConfigurationError
from tests.gateway.conftest import write_toml

PASSWORD = "pg-canary-pw-41d7"


@pytest.mark.parametrize(
    ("query", "said"),
    [
        (
            "sslmode=requir",
            (
                "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full, not 'requir'; "
                "did you mean 'require'?"
            ),
        ),
        ("target_session_attrs=readwrite", "target_session_attrs must be one of"),
        ("connect_timeout=soon", "connect_timeout must be a whole number"),
    ],
)
@pytest.mark.parametrize("table", ["ledger", "gateway.audit"])
def test_a_misspelt_libpq_value_refuses_the_start_like_a_misspelt_option_name(tmp_path, table, query, said):
    """``sslmode=requir`` was a degraded start ("connection is bad: invalid sslmode value") whose rows
    spooled for ever, while ``applicaton_name=x`` refused the start: libpq checks values only when it
    connects. No server is needed to tell: the start is refused before any connection."""
    url = f"postgresql://gtl:{PASSWORD}@127.0.0.1:1/gtl?application_name=gtl-gateway&{query}"
    tables = {"providers.echo": {}, "gateway.http": {"port": 0}, table: {"url": url}}
    with pytest.raises(ConfigurationError) as refused:
        start_gateway(write_toml(tmp_path / "gtl.toml", tables))
    message = str(refused.value)
    assert "is not a valid PostgreSQL URL" in message and said in message
    assert PASSWORD not in message


def test_good_libpq_values_pass():
    for query in ("sslmode=verify-full", "target_session_attrs=read-write", "connect_timeout=3", "keepalives=1"):
        assert parse_postgres_url(f"postgresql://gtl@127.0.0.1:1/gtl?{query}").shown
