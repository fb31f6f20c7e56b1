"""A reload keeps the revocation list it runs with when ``[gateway.jwt] revocations`` names the same
one, so a reload while the shared Redis is down does not trade the set read before for a list that
can read nothing (and would refuse every token); a new Redis list that cannot be read is not taken,
and the token policy stays as it was. In process, with a ``Reloader`` (the gateway child process
with a real Redis: tests/engine/stores/test_revocations_outage.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.auth import build_authenticator
from gtl_nb.gateway.reload import Reloader, SwappableAuthenticator
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol.errors import GTLError
from tests.gateway.conftest import write_toml

SECRET_ENV = "GTL_TEST_RELOAD_REVOCATIONS_SECRET"


def dead_redis() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


class Gateway:
    """A configuration file, its engine and the swappable hook a reload changes."""

    def __init__(self, tmp_path: Path, jwt: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.config = self.write(jwt)
        settings = load_settings(config=self.config)
        self.engine = build_engine(settings)
        options = GatewaySettings.from_settings(settings)
        self.hook = SwappableAuthenticator(build_authenticator(settings, options))
        self.reloader = Reloader(self.engine, config=self.config, settings=settings, authenticate=self.hook)

    def write(self, jwt: dict[str, Any]) -> Path:
        table = {"issuer": "reload-revocations", "secret_env": SECRET_ENV, "default_deployments": ["*"], **jwt}
        return write_toml(
            self.tmp_path / "gtl.toml",
            {
                "providers.echo": {},
                "ledger": {"path": str(self.tmp_path / "ledger.sqlite")},
                "gateway": {"auth": "jwt"},
                "gateway.jwt": table,
            },
        )

    def reload(self, jwt: dict[str, Any]) -> str:
        self.write(jwt)
        return self.reloader.reload()

    @property
    def revocations(self) -> Any:
        return self.hook.target.revocations  # type: ignore[attr-defined]


@pytest.fixture
def gateways(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Gateway]]:
    monkeypatch.setenv(SECRET_ENV, "reload-revocations-secret-0123456789abcdef")
    made: list[Gateway] = []
    yield made
    for gateway in made:
        close = getattr(gateway.revocations, "close", None)
        if close is not None:
            close()
        asyncio.run(gateway.engine.aclose())


def test_the_same_sqlite_file_is_kept_and_a_replaced_one_is_closed(tmp_path: Path, gateways: list[Gateway]):
    store = tmp_path / "tokens.sqlite3"
    gateway = Gateway(tmp_path, {"revocations": str(store)})
    gateways.append(gateway)
    first = gateway.revocations
    first.revoke("jti-1", 4_000_000_000.0)
    line = gateway.reload({"revocations": str(store), "issuer": "renamed"})
    assert line.split("; [gateway.jwt] secret_env")[0].endswith("token policy renewed (issuer)"), line
    assert gateway.revocations is first and gateway.hook.target.policy.issuer == "renamed"  # type: ignore[attr-defined]
    assert first.is_revoked("jti-1")  # still open: the same connection serves
    gateway.reload({"revocations": str(store), "refresh": 1})  # another pace: a new store on the same file
    second = gateway.revocations
    assert second is not first and second.is_revoked("jti-1")
    with pytest.raises(GTLError):  # the one no longer used was closed
        first.revoked()


def test_the_same_redis_list_is_kept_with_the_new_refresh(tmp_path: Path, gateways: list[Gateway]):
    url = dead_redis()  # down from the start: the list was never read, and stays so
    gateway = Gateway(tmp_path, {"revocations": url, "refresh": 5})
    gateways.append(gateway)
    first = gateway.revocations
    line = gateway.reload({"revocations": url, "refresh": 2, "issuer": "renamed"})
    assert line.split("; [gateway.jwt] secret_env")[0].endswith("token policy renewed (issuer, refresh)"), line
    assert gateway.revocations is first and first.refresh == 2
    assert gateway.hook.target.policy.issuer == "renamed"  # type: ignore[attr-defined]


def test_a_new_redis_list_that_cannot_be_read_leaves_the_token_policy_as_it_was(
    tmp_path: Path, gateways: list[Gateway]
):
    gateway = Gateway(tmp_path, {"revocations": str(tmp_path / "tokens.sqlite3")})
    gateways.append(gateway)
    before = gateway.hook.target
    line = gateway.reload({"revocations": dead_redis(), "issuer": "renamed"})
    assert "token policy not renewed" in line and "not read yet" in line and "reload again" in line, line
    assert "token policy renewed" not in line and line.count("\n") == 0, line
    assert gateway.hook.target is before and before.policy.issuer == "reload-revocations"  # type: ignore[attr-defined]
    assert gateway.revocations.is_revoked("jti-1") is False  # the file still serves


def test_gtl_reload_hears_of_a_token_policy_not_renewed(tmp_path: Path, gateways: list[Gateway]):
    """The rest of the file is taken, the token policy is not: the report says "in part" (gtl reload's
    exit status 3), so a script does not take the new secret or issuer for applied."""
    from gtl_nb.gateway.main import _reloading
    from gtl_nb.gateway.reload_report import ReloadReporter, read_report

    gateway = Gateway(tmp_path, {"revocations": str(tmp_path / "tokens.sqlite3")})
    gateways.append(gateway)
    reporter = ReloadReporter(tmp_path / "gateway.pid.reload")
    gateway.write({"revocations": dead_redis(), "issuer": "renamed"})

    async def reload_once() -> None:
        _reloading(gateway.reloader, reporter)()
        while reporter.state.covered < 1 or reporter.state.running:
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(reload_once(), 30))
    found = read_report(tmp_path / "gateway.pid.reload")
    assert found is not None and found.ok is True and found.partial is True, found
    assert "token policy not renewed" in (found.line or "")
