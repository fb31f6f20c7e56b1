"""The ``models`` query's provider calls: one serves every caller for a while, so a token whose
completions are rate-limited cannot spend the provider's limit on the gateway's key by listing models."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gtl_nb import sim
from gtl_nb.engine.credentials import StaticCredentials, with_key
from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.model_lists import ModelLists
from gtl_nb.protocol.errors import AuthenticationError, ProviderUnavailableError
from gtl_nb.providers.base import Deployment
from tests.gateway.conftest import SIM_KEY, write_toml


def test_a_caller_at_its_rate_limit_cannot_flood_the_provider_with_model_lists(tmp_path):
    provider = sim.serve("openai", api_key=SIM_KEY)
    tables = {
        "providers.openai": {"api_key": SIM_KEY, "base_url": provider.base_url},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "budgets": {"requests_per_minute": 1},
        "gateway.http": {"port": 0},
    }
    gateway = start_gateway(write_toml(tmp_path / "gtl.toml", tables))
    try:
        url = gateway.url("http")
        request = {"type": "completion_request", "session_id": "", "model": "openai:gpt-4o-mini", "stream": False}
        request["messages"] = [{"role": "user", "content": "hi"}]
        assert [httpx.post(url + "/v1/gtl", json=request, timeout=30).status_code for _ in range(2)] == [200, 429]
        query = {"type": "query", "query_id": "q", "name": "models", "params": {"deployment": "openai"}}
        for _ in range(20):
            answer = httpx.post(url + "/v1/gtl/query", json=query, timeout=30).json()
            assert "gpt-4o-mini" in answer["result"]["models"]
        listings = [r for r in provider.requests if r.method == "GET" and r.path.endswith("/models")]
        assert len(listings) == 1
    finally:
        gateway.stop()
        provider.close()


def _caller_credentials(engine: Any, deployment: Deployment, key_name: str | None = None) -> Deployment:
    """The fakes' ``Engine.caller_credentials``: the key the listing was sent with."""
    return with_key(engine.credentials, deployment, key_name)


def _names_only(cls: type) -> type:
    """A fake engine of ``list_models`` only, given ``listed_models`` (what ``ModelLists`` asks): its names,
    no times."""

    async def listed_models(self: Any, name: str, key_name: str | None = None) -> tuple[list[str], dict[str, int]]:
        return await self.list_models(name, key_name), {}

    cls.listed_models = listed_models  # type: ignore[attr-defined]
    return cls


class _Provider:
    """An engine whose ``listed_models`` counts its calls, answers once ``release`` is set, and fails
    (``AUTH_FAILED``) while ``refusing``."""

    credentials = StaticCredentials()
    caller_credentials = _caller_credentials

    def __init__(self) -> None:
        self.calls = 0
        self.refusing = False
        self.release = asyncio.Event()

    async def listed_models(self, name: str, key_name: str | None = None) -> tuple[list[str], dict[str, int]]:
        self.calls += 1
        await self.release.wait()
        if self.refusing:
            raise AuthenticationError(f"deployment {name!r} refused the gateway's own credentials")
        return [f"{name}-model-{self.calls}"], {}


def test_model_lists_are_kept_asked_once_at_a_time_and_asked_again_after_a_reload():
    async def main() -> None:
        provider, now = _Provider(), SimpleNamespace(value=0.0)
        lists = ModelLists(provider, clock=lambda: now.value, fresh_for=60, failed_for=10)  # type: ignore[arg-type]
        deployment = Deployment(name="openai", type="openai")
        waiting = [asyncio.ensure_future(lists.names(deployment)) for _ in range(5)]
        await asyncio.sleep(0)
        provider.release.set()
        assert await asyncio.gather(*waiting) == [["openai-model-1"]] * 5 and provider.calls == 1
        now.value = 59.0
        assert await lists.names(deployment) == ["openai-model-1"] and provider.calls == 1
        now.value = 60.0  # no longer fresh: still served at once, and asked again in the background
        assert await lists.names(deployment) == ["openai-model-1"]
        await asyncio.sleep(0)
        assert await lists.names(deployment) == ["openai-model-2"] and provider.calls == 2
        reloaded = dataclasses.replace(deployment)  # a reload's new configuration: not the list asked before
        assert await lists.names(reloaded) == ["openai-model-3"] and provider.calls == 3
        provider.refusing, now.value = True, 200.0
        assert await lists.names(reloaded) == ["openai-model-3"]  # stale, served while its refresh fails
        await asyncio.sleep(0)
        for _ in range(3):  # a failure is kept too, for a shorter while
            with pytest.raises(AuthenticationError, match="refused the gateway's own credentials"):
                await lists.names(reloaded)
        assert provider.calls == 4
        provider.refusing, now.value = False, 210.0
        assert await lists.names(reloaded) == ["openai-model-5"]

    asyncio.run(main())


def test_a_stale_list_is_served_at_once_while_a_hanging_provider_is_asked_again():
    """A provider that accepts and never answers delayed a ``/v1/models`` caller every minute (the
    listing's wait); an answered list is now served while one call in the background asks again — until
    ``stale_for`` runs out, when the caller waits again, and a refresh that fails replaces the list."""

    async def main() -> None:
        provider, now = _Provider(), SimpleNamespace(value=0.0)
        lists = ModelLists(provider, clock=lambda: now.value, fresh_for=60, failed_for=10, stale_for=600)  # type: ignore[arg-type]
        deployment = Deployment(name="openai", type="openai")
        provider.release.set()
        assert await lists.names(deployment) == ["openai-model-1"]
        provider.release.clear()  # the provider hangs from now on
        now.value = 100.0
        for _ in range(5):  # every caller answered at once, one call under way for all
            assert await asyncio.wait_for(lists.names(deployment), 1) == ["openai-model-1"]
            assert await asyncio.wait_for(lists.times_within(deployment, None, 2.0), 1) == {}
            await asyncio.sleep(0)
        assert provider.calls == 2
        now.value = 661.0  # past fresh_for + stale_for: the list is too old to serve, the caller waits
        waiting = asyncio.ensure_future(lists.names(deployment))
        await asyncio.sleep(0.01)
        assert not waiting.done() and provider.calls == 2  # (the call under way is the one it waits for)
        provider.release.set()
        assert await waiting == ["openai-model-2"]
        now.value, provider.refusing = 800.0, True  # stale again; its refresh fails
        assert await lists.names(deployment) == ["openai-model-2"]
        for _ in range(3):
            await asyncio.sleep(0)
        with pytest.raises(AuthenticationError, match="refused the gateway's own credentials"):
            await lists.names(deployment)
        assert provider.calls == 3

    asyncio.run(main())


def test_a_caller_that_goes_away_does_not_cancel_the_others_listing():
    async def main() -> None:
        provider = _Provider()
        lists = ModelLists(provider)  # type: ignore[arg-type]
        deployment = Deployment(name="openai", type="openai")
        leaving = asyncio.ensure_future(lists.names(deployment))
        staying = asyncio.ensure_future(lists.names(deployment))
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        provider.release.set()
        assert await staying == ["openai-model-1"] and provider.calls == 1
        assert leaving.cancelled()

    asyncio.run(main())


def test_a_listing_that_fails_with_no_gtl_error_is_kept_and_said_as_the_providers_trouble():
    """A provider body no parser expected raised a plain ``TypeError``: nothing was kept, so every query
    called the provider again, and the caller read that its own params were unusable."""

    @_names_only
    class Odd:
        calls = 0

        async def list_models(self, name: str, key_name: str | None = None) -> list[str]:
            Odd.calls += 1
            raise TypeError("'int' object is not iterable")

    async def main() -> None:
        lists = ModelLists(Odd(), clock=lambda: 0.0)  # type: ignore[arg-type]
        deployment = Deployment(name="odd", type="anthropic")
        for _ in range(3):
            with pytest.raises(
                ProviderUnavailableError, match=r"the model list of odd could not be read \(TypeError\)"
            ):
                await lists.names(deployment)
        assert Odd.calls == 1

    asyncio.run(main())


def test_a_caller_of_the_reloaded_deployment_gets_its_own_calls_answer():
    """A call begun before a reload that ended after the one begun after it left its answer kept (and
    handed it to the caller of the new configuration)."""

    @_names_only
    class TwoCalls:
        credentials = StaticCredentials()
        caller_credentials = _caller_credentials

        def __init__(self) -> None:
            self.gates = [asyncio.Event(), asyncio.Event()]
            self.calls = 0

        async def list_models(self, name: str, key_name: str | None = None) -> list[str]:
            number = self.calls
            self.calls += 1
            await self.gates[number].wait()
            return [f"list-from-call-{number + 1}"]

    async def main() -> None:
        provider = TwoCalls()
        lists = ModelLists(provider, clock=lambda: 0.0)  # type: ignore[arg-type]
        old = Deployment(name="openai", type="openai", base_url="https://old.example/v1")
        new = dataclasses.replace(old, base_url="https://new.example/v1")
        before = asyncio.ensure_future(lists.names(old))
        await asyncio.sleep(0)
        after = asyncio.ensure_future(lists.names(new))
        await asyncio.sleep(0)
        provider.gates[1].set()
        assert await after == ["list-from-call-2"]
        provider.gates[0].set()
        assert await before == ["list-from-call-1"]  # its own caller still hears its answer
        assert await lists.names(new) == ["list-from-call-2"] and provider.calls == 2  # the new one stays kept

    asyncio.run(main())


def test_a_model_id_holding_the_deployments_key_is_left_out_of_the_list(caplog):
    """A model id is the provider's text, passed to anyone who may list models: one quoting the
    deployment's key (whoever answers at its address chose the ids) never reaches them, nor one shaped
    like a credential; the others are listed."""
    key = "sk-canary-0123456789abcdefghij"

    class Rotated:  # the key a listing is sent: re-read since the deployment was configured
        def resolve(self, deployment: Deployment) -> Deployment:
            return dataclasses.replace(deployment, api_key=key)

    @_names_only
    class Quoting:
        credentials = Rotated()
        caller_credentials = _caller_credentials

        async def list_models(self, name: str, key_name: str | None = None) -> list[str]:
            return [
                "gpt-4o",
                f"m-{key}",
                f"m-{key.upper()}",  # in another letter case: still the key
                "o1-sk-canary-0123…ghij",
                "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc",
                "gpt-4o-mini",
            ]

    async def ask() -> list[str]:
        lists = ModelLists(Quoting(), clock=lambda: 0.0)  # type: ignore[arg-type]
        return await lists.names(Deployment(name="openai", type="openai", api_key="sk-configured-before-rotation-0000"))

    names = asyncio.run(ask())
    assert names == ["gpt-4o", "gpt-4o-mini"]
    assert "4 name(s) holding a credential left out" in caplog.text and key not in caplog.text


def test_a_token_choosing_a_stored_key_is_listed_what_that_key_sees():
    """A deployment with a vault key per team: every ``models`` query was asked with the deployment's own
    key and its list shared, so one team read another's fine-tuned models. Each stored key has its list."""

    class Keyed(StaticCredentials):
        def resolve_for(self, deployment: Deployment, key_name: str) -> Deployment:
            return dataclasses.replace(deployment, api_key=f"secret-of-{key_name}")

    @_names_only
    class PerKey:
        credentials = Keyed()
        caller_credentials = _caller_credentials

        def __init__(self) -> None:
            self.asked: list[str | None] = []

        async def list_models(self, name: str, key_name: str | None = None) -> list[str]:
            self.asked.append(key_name)
            return ["gpt-4o-mini", *([f"ft:gpt-4o-mini:{key_name}:private"] if key_name else [])]

    async def main() -> None:
        provider = PerKey()
        lists = ModelLists(provider, clock=lambda: 0.0)  # type: ignore[arg-type]
        shared = Deployment(name="shared", type="openai")
        assert await lists.names(shared, "team-a") == ["gpt-4o-mini", "ft:gpt-4o-mini:team-a:private"]
        assert await lists.names(shared, "team-b") == ["gpt-4o-mini", "ft:gpt-4o-mini:team-b:private"]
        assert await lists.names(shared) == ["gpt-4o-mini"]
        assert await lists.names(shared, "team-a") == ["gpt-4o-mini", "ft:gpt-4o-mini:team-a:private"]
        assert provider.asked == ["team-a", "team-b", None]  # each key's list asked once, then kept

    asyncio.run(main())
