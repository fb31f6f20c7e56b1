"""Error codes map to one exception class each and back; version negotiation picks the highest common."""

from __future__ import annotations

import pytest

from gtl_nb.protocol import (
    ERROR_CLASSES,
    CancelledError,
    Error,
    GTLError,
    Hello,
    ProtocolError,
    RateLimitError,
    RemoteError,
    RequestError,
    VersionMismatchError,
    client_hello,
    error_class,
    error_from_event,
    negotiate,
)
from gtl_nb.protocol.messages import ErrorCode
from gtl_nb.protocol.negotiation import check_answer, header_value, negotiate_header

ALL_CODES = list(ErrorCode.__args__)  # type: ignore[attr-defined]


def test_every_code_has_exactly_one_class():
    assert sorted(ERROR_CLASSES) == sorted(ALL_CODES)
    assert len(set(ERROR_CLASSES.values())) == len(ALL_CODES)
    for code, cls in ERROR_CLASSES.items():
        assert cls.code == code and issubclass(cls, GTLError)


@pytest.mark.parametrize("code", ALL_CODES)
def test_error_event_round_trips_through_its_exception(code):
    event = Error(
        session_id="s",
        code=code,
        message="boom",
        retryable=True,
        provider="p",
        retry_after=2.5,
        http_status=429,
    )
    exc = error_from_event(event)
    assert type(exc) is error_class(code)
    assert exc.to_event() == event
    assert code in str(exc) and "[p]" in str(exc)


def test_retryability_defaults():
    retryable = {code for code, cls in ERROR_CLASSES.items() if cls.default_retryable}
    assert retryable == {"RATE_LIMIT", "OVERLOADED", "PROVIDER_UNAVAILABLE", "TIMEOUT"}
    assert RateLimitError("quota exhausted", retryable=False).retryable is False


def test_caller_mistakes_and_remote_faults_are_different_families():
    assert issubclass(error_class("INVALID_REQUEST"), RequestError)
    assert issubclass(error_class("AUTH_FAILED"), RequestError)
    assert issubclass(error_class("OVERLOADED"), RemoteError)
    assert issubclass(error_class("TIMEOUT"), RemoteError)
    assert not issubclass(CancelledError, (RequestError, RemoteError))
    assert issubclass(ProtocolError, ValueError)
    assert error_class("NOT_A_CODE") is error_class("INTERNAL")


def test_negotiation_picks_the_highest_common_version():
    answer = negotiate(Hello(versions=["1.0", "1.1"], features=["reasoning", "teleport"]), supported=("1.0", "1.1"))
    assert answer.version == "1.1"
    assert answer.features == ["reasoning"]
    assert negotiate(client_hello()).version == "1.0"


def test_negotiation_without_a_common_version_is_a_clear_error():
    with pytest.raises(VersionMismatchError, match=r"no common GTL version: client offers \['2.0'\]"):
        negotiate(Hello(versions=["2.0"]))
    with pytest.raises(VersionMismatchError, match="malformed protocol version"):
        negotiate(Hello(versions=["one"]), supported=("one", "1.0"))


def test_a_patch_level_changes_nothing_in_negotiation():
    """The spec's versions are semantic (Major.Minor.Patch): a peer that writes ``1.0.0`` or ``1.0.2``
    speaks 1.0, and the answer is the version as the server spells it."""
    assert negotiate(Hello(versions=["1.0.0"])).version == "1.0"
    assert negotiate(Hello(versions=["1.0.2", "1.1.0"]), supported=("1.0", "1.1")).version == "1.1"
    assert negotiate_header("1.0.0") == "1.0"
    offer = Hello(versions=["1.0.0"], features=[])
    assert check_answer(offer, Hello(version="1.0", features=[])).version == "1.0"
    with pytest.raises(VersionMismatchError, match="client offers"):
        negotiate(Hello(versions=["1.1.0", "2.0", "1." + "0" * 5000]))
    for typo in ("1", "1.0.0.0", "1.x", "\u00b9.0", "abc"):  # not a version: said so, not "no common version"
        with pytest.raises(VersionMismatchError, match=f"malformed GTL version {typo!r}"):
            negotiate(Hello(versions=["2.0", typo]))
    with pytest.raises(VersionMismatchError, match=r"the server answered version '1\.1'"):
        check_answer(offer, Hello(version="1.1", features=[]))


def test_a_long_offer_is_named_briefly_in_the_refusal():
    with pytest.raises(VersionMismatchError) as refused:
        negotiate(Hello(versions=[f"9.{n}" + "0" * 200 for n in range(1000)]))
    assert "and 992 more" in str(refused.value)
    assert len(str(refused.value)) < 1000


def test_a_gtl_version_header_is_negotiated_as_the_spec_writes_it():
    """``Client: GTL-Version: 1.0`` / ``Server: GTL-Version: 1.0, 1.1`` → 1.0, the highest both support."""
    assert header_value(("1.0", "1.1")) == "1.0, 1.1"
    assert negotiate_header("1.0", supported=("1.0", "1.1")) == "1.0"
    assert negotiate_header(" 1.1 ,1.0,", supported=("1.0", "1.1")) == "1.1"
    with pytest.raises(VersionMismatchError, match=r"no common GTL version: client offers \['2.0'\]"):
        negotiate_header("2.0")
    with pytest.raises(VersionMismatchError, match=r"malformed GTL version 'abc': a version is MAJOR\.MINOR"):
        negotiate_header("abc")
    assert negotiate_header("") == "1.0"  # no version named: the spec's 1.0, as with no header


def test_a_hello_that_names_no_version_speaks_1_0():
    assert negotiate(Hello()).version == "1.0"
    assert negotiate(Hello(versions=[])).version == "1.0"
    assert negotiate(Hello(), supported=("1.0", "1.1")).version == "1.0"
