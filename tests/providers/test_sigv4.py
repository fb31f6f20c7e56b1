"""The SigV4 signer: AWS's documented example and equality with botocore's SigV4Auth."""

from __future__ import annotations

import datetime
import hashlib
import hmac
from unittest import mock
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gtl_nb.providers.sigv4 import (
    AwsCredentials,
    amz_date,
    canonical_host,
    canonical_query,
    canonical_request,
    canonical_uri,
    credential_scope,
    sha256_hex,
    sign_headers,
    signing_key,
    string_to_sign,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
MODEL_IDS = [
    "amazon.nova-lite-v1:0",
    "us.amazon.nova-micro-v1:0",
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic.claude-3-haiku-20240307-v1:0:200k",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0",
    "arn:aws:bedrock:eu-west-1:123456789012:provisioned-model/abc123xyz",
    "meta.llama3-8b-instruct-v1:0",
]

# AWS's worked example ("Create a signed AWS API request", IAM ListUsers, 2015-08-30).
AWS_EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_aws_documented_example_signing_key_and_signature() -> None:
    key = signing_key(AWS_EXAMPLE_SECRET, "20150830", "us-east-1", "iam")
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Host": "iam.amazonaws.com",
        "X-Amz-Date": "20150830T123600Z",
    }
    url = "https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers"
    canonical, signed = canonical_request("GET", url, headers, sha256_hex(b""))
    assert signed == "content-type;host;x-amz-date"
    assert sha256_hex(canonical.encode()) == "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    text = string_to_sign("20150830T123600Z", credential_scope("20150830", "us-east-1", "iam"), canonical)
    signature = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    assert signature == "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"


def test_canonical_uri_encodes_the_model_id_segment_twice() -> None:
    assert (
        canonical_uri("/model/us.amazon.nova-micro-v1%3A0/converse") == "/model/us.amazon.nova-micro-v1%253A0/converse"
    )
    assert canonical_uri("") == "/"
    assert canonical_uri("/a/./b/../c") == "/a/c"


def test_canonical_query_sorts_and_encodes() -> None:
    assert canonical_query("b=2&a=x%20y&c") == "a=x%20y&b=2&c="
    assert canonical_query("") == ""


def test_canonical_host_drops_default_ports_only() -> None:
    assert canonical_host("https://Bedrock-Runtime.us-east-1.amazonaws.com:443/x") == (
        "bedrock-runtime.us-east-1.amazonaws.com"
    )
    assert canonical_host("http://127.0.0.1:8123/model") == "127.0.0.1:8123"


def test_amz_date_is_utc_from_the_given_time() -> None:
    assert amz_date(NOW) == "20231114T221320Z"


def _botocore_authorization(
    method: str, url: str, headers: dict[str, str], body: bytes, session_token: str | None, region: str
) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    fixed = datetime.datetime.fromtimestamp(NOW, tz=datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cr3t/Key+", session_token), "bedrock", region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("model", MODEL_IDS)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDExAMPLE+TOKEN=="])
@pytest.mark.parametrize("operation", ["converse", "converse-stream"])
def test_signature_equals_botocore_for_bedrock_runtime(model: str, token: str | None, operation: str) -> None:
    region = "eu-west-1" if "eu-west-1" in model else "us-east-1"
    url = f"https://bedrock-runtime.{region}.amazonaws.com/model/{quote(model, safe='')}/{operation}"
    body = b'{"messages":[{"role":"user","content":[{"text":"Hello \xc3\xa9"}]}],"inferenceConfig":{}}'
    headers = {"Content-Type": "application/json", "Accept": "application/vnd.amazon.eventstream"}
    mine = sign_headers(
        "POST",
        url,
        headers,
        body,
        credentials=AwsCredentials("AKIDEXAMPLE", "s3cr3t/Key+", token),
        region=region,
        service="bedrock",
        now=NOW,
    )
    # botocore signs every header it is given: give it ours, minus what SigV4 adds.
    given = {k: v for k, v in mine.items() if k not in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")}
    theirs = _botocore_authorization("POST", url, given, body, token, region)
    assert mine["Authorization"] == theirs["Authorization"]
    assert mine["X-Amz-Date"] == theirs["X-Amz-Date"] == "20231114T221320Z"
    assert mine.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token") == token
    assert mine["X-Amz-Content-Sha256"] == hashlib.sha256(body).hexdigest()
    signed = mine["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(signed)
    assert ("x-amz-security-token" in signed) is (token is not None)


def test_signature_equals_botocore_for_a_control_plane_get_on_a_custom_port() -> None:
    url = "http://127.0.0.1:8123/foundation-models?byProvider=Anthropic&byOutputModality=TEXT"
    mine = sign_headers(
        "GET",
        url,
        {"Accept": "application/json"},
        b"",
        credentials=AwsCredentials("AKIDEXAMPLE", "s3cr3t/Key+"),
        region="us-west-2",
        service="bedrock",
        now=NOW,
    )
    given = {k: v for k, v in mine.items() if k not in ("Authorization", "X-Amz-Date")}
    assert mine["Authorization"] == _botocore_authorization("GET", url, given, b"", None, "us-west-2")["Authorization"]


def test_signing_changes_with_time_secret_and_body() -> None:
    url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"

    def auth(secret: str = "a", now: float = NOW, body: bytes = b"{}") -> str:
        creds = AwsCredentials("AKID", secret)
        signed = sign_headers("POST", url, {}, body, credentials=creds, region="us-east-1", service="bedrock", now=now)
        return signed["Authorization"]

    assert len({auth(), auth(secret="b"), auth(now=NOW + 1), auth(body=b"{ }")}) == 4


def test_credentials_repr_hides_the_secret() -> None:
    assert "sekrit" not in repr(AwsCredentials("AKID", "sekrit", "tok"))
