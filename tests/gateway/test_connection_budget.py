"""Each TCP listener's share of the file descriptors (``gateway.connection_budget``); the sockets' side is
``tests/network/test_descriptor_budget.py``."""

from __future__ import annotations

from gtl_nb.gateway.connection_budget import FIXED_RESERVE, connection_budget, listener_share
from gtl_nb.gateway.grpc import server_options
from gtl_nb.gateway.listeners import Limits


def test_the_default_budget_is_half_of_what_the_reserve_leaves():
    assert connection_budget(0, 20_000) == (20_000 - FIXED_RESERVE) // 2
    assert listener_share(0, 2, 20_000) == (20_000 - FIXED_RESERVE) // 4


def test_a_configured_budget_is_kept_below_the_descriptor_limit():
    assert connection_budget(500, 20_000) == 500
    assert connection_budget(50_000, 20_000) == 20_000 - FIXED_RESERVE


def test_without_a_descriptor_limit_only_a_configured_budget_bounds():
    assert connection_budget(0, None) == 0
    assert connection_budget(300, None) == 300


def test_every_listener_keeps_at_least_one_connection():
    assert listener_share(0, 2, 10) == 1


def test_the_grpc_server_caps_its_connections_at_its_share():
    options = dict(server_options(Limits(max_connections=1000, tcp_listeners=2)))
    assert options["grpc.max_allowed_incoming_connections"] == listener_share(1000, 2)  # 500, or less under a low limit


def test_one_address_holds_at_most_half_its_listeners_share(caplog):
    from gtl_nb.gateway.http import _ConnectionGuard

    assert _ConnectionGuard(256, listener_cap=10_000).cap == 256
    with caplog.at_level("WARNING", logger="gtl_nb"):
        assert _ConnectionGuard(256, listener_cap=240).cap == 120  # ulimit -n 1024, two TCP listeners
    assert "not max_connections_per_address (256)" in caplog.text
    assert _ConnectionGuard(256).cap == 256 and _ConnectionGuard(256, listener_cap=1).cap == 1
