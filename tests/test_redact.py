"""Secrets never shown: storage options by allowlist, URIs without userinfo, free text."""

from __future__ import annotations

import json

import pytest

from pipeline.redact import (
    MASK,
    redact_options,
    redact_text,
    redact_uri,
    secret_values,
    show_undecodable,
    strip_userinfo,
)

OPTIONS = {
    "key": "AKIAEXAMPLEKEY",
    "secret": "wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
    "token": "FwoGZXIvYXdzEJr//////////wEaDH",
    "endpoint_url": "http://minio:m1n10-pw@127.0.0.1:9000",
    "anon": False,
    "use_ssl": True,
    "default_block_size": 5 * 2**20,
    "connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;"
    "AccountKey=c2VjcmV0a2V5c2VjcmV0a2V5==;EndpointSuffix=core.windows.net",
    "passphrase": "correct horse battery staple",
    "client_kwargs": {
        "region_name": "eu-west-1",
        "headers": {"Authorization": "Bearer eyJhbGciOi.eyJzdWIi.SflKxwRJSM", "User-Agent": "me"},
        "aws_session_token": "IQoJb3JpZ2luX2Vj",
    },
    "config_kwargs": {
        "retries": {"max_attempts": 10, "mode": "adaptive"},
        "s3": {"addressing_style": "path"},
        "connect_timeout": 5,
    },
    "my_plugin": {"nested": {"password": "p4ssw0rd-nested"}},
    "unknown_flag": True,
}


def test_options_keep_only_known_harmless_keys():
    out = redact_options(OPTIONS)
    assert out == {
        "key": MASK,
        "secret": MASK,
        "token": MASK,
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "use_ssl": True,
        "default_block_size": 5 * 2**20,
        "connection_string": MASK,
        "passphrase": MASK,
        "client_kwargs": {
            "region_name": "eu-west-1",
            "headers": {"Authorization": MASK, "User-Agent": "me"},
            "aws_session_token": MASK,
        },
        "config_kwargs": {
            "retries": {"max_attempts": 10, "mode": "adaptive"},
            "s3": {"addressing_style": "path"},
            "connect_timeout": 5,
        },
        "my_plugin": MASK,
        "unknown_flag": MASK,
    }
    text = json.dumps(out)
    for secret in (
        "AKIAEXAMPLE",
        "wJalr",
        "m1n10-pw",
        "minio:",
        "c2VjcmV0",
        "horse",
        "eyJhbG",
        "IQoJb3",
        "p4ssw0rd",
        "FwoGZX",
    ):
        assert secret not in text
    assert OPTIONS["client_kwargs"]["headers"]["Authorization"].startswith("Bearer")  # untouched


@pytest.mark.parametrize(
    "token, shown",
    [
        ("anon", "anon"),
        ("google_default", "google_default"),
        ("cloud", "cloud"),
        ("/home/me/sa.json", MASK),
        ({"type": "service_account", "private_key": "-----BEGIN"}, MASK),
        (None, MASK),
    ],
)
def test_gcs_token_kept_only_when_it_names_a_method(token, shown):
    assert redact_options({"token": token, "project": "my-proj"}) == {
        "token": shown,
        "project": "my-proj",
    }


def test_options_odd_shapes():
    assert redact_options({}) == {} and redact_options(None) == {}
    # values of safe keys that hide credentials in a URL or a list
    out = redact_options(
        {
            "endpoint_url": "https://h/?X-Amz-Signature=abc123&x=1",
            "region": ["eu-west-1", "https://u:pw-in-list@h"],
            "verify": "/etc/ssl/ca.pem",
            "Region_Name": "us-east-1",
        }
    )
    assert out == {
        "endpoint_url": f"https://h/?X-Amz-Signature={MASK}&x=1",
        "region": ["eu-west-1", "https://h"],
        "verify": "/etc/ssl/ca.pem",
        "Region_Name": "us-east-1",
    }
    assert redact_options({"headers": "Authorization: Bearer x"}) == {"headers": MASK}
    assert redact_options({"key": b"raw-bytes-secret"}) == {"key": MASK}


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("s3://KEY:SECRET@bucket/a.jpg", "s3://bucket/a.jpg"),
        ("https://user:pass@host/x", "https://host/x"),
        ("https://user@host:8443/x", "https://host:8443/x"),
        ("s3://KEY:p@ss@bucket/x.jpg", "s3://bucket/x.jpg"),  # '@' in the password
        ("s3://AKIA:wJal/rXUt+nFE@bucket/a@2x.png", "s3://bucket/a@2x.png"),  # '/' in the password
        ("s3://bucket/icons/logo@2x.png", "s3://bucket/icons/logo@2x.png"),
        ("http://host:9000/p@2x.png", "http://host:9000/p@2x.png"),
        ("http://[::1]:8080/a@b.jpg", "http://[::1]:8080/a@b.jpg"),
        ("/data/in/me@example.com/a.jpg", "/data/in/me@example.com/a.jpg"),
        ("/data/in/bad\udcff\udcfe@x:y.jpg", "/data/in/bad\udcff\udcfe@x:y.jpg"),
        ("file:///data/a:b@c.jpg", "file:///data/a:b@c.jpg"),
        ("pkg://stylize/samples/tubingen.jpg", "pkg://stylize/samples/tubingen.jpg"),
    ],
)
def test_strip_userinfo(uri, expected):
    assert strip_userinfo(uri) == expected


def test_redact_uri_masks_credential_query_parameters():
    url = (
        "https://b.s3.amazonaws.com/a.jpg?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2024"
        "&X-Amz-Signature=deadbeef&x-amz-security-token=IQo"
    )
    assert redact_uri(url) == (
        f"https://b.s3.amazonaws.com/a.jpg?X-Amz-Algorithm=AWS4"
        f"&X-Amz-Credential={MASK}&X-Amz-Signature={MASK}"
        f"&x-amz-security-token={MASK}"
    )
    assert (
        redact_uri("https://acct.blob.core.windows.net/c/a.jpg?sv=2022&sig=abc%3D")
        == f"https://acct.blob.core.windows.net/c/a.jpg?sv=2022&sig={MASK}"
    )
    assert redact_uri("/local/a=b.jpg") == "/local/a=b.jpg"


def test_secret_values_and_redact_text():
    secrets = secret_values(OPTIONS)
    assert "AKIAEXAMPLEKEY" in secrets and "m1n10-pw" in secrets
    assert "SflKxwRJSM" not in secrets  # only pieces of 8+ characters stand alone...
    assert "eyJhbGciOi.eyJzdWIi.SflKxwRJSM" in secrets  # ...like the bearer token
    assert "c2VjcmV0a2V5c2VjcmV0a2V5==" in secrets  # the key inside the connection string
    assert "minio" not in secrets and "eu-west-1" not in secrets and "me" not in secrets
    assert secrets == sorted(secrets, key=lambda s: (-len(s), s))
    trace = (
        "Traceback (most recent call last):\n"
        "  File 'x.py', line 1, in <module>\n"
        "botocore.exceptions.ClientError: InvalidAccessKeyId for AKIAEXAMPLEKEY "
        "(secret wJalrXUtnFEMI%2FK7MDENG%2BbPxRfiCY) at "
        "'http://minio:m1n10-pw@127.0.0.1:9000/bucket/k' "
        "while reading s3://K2:S2@bucket/a.jpg and https://u:p@h/x.jpg?token=tok123 "
        "Authorization: Bearer eyJhbGciOi.eyJzdWIi.SflKxwRJSM "
        "from /in/caf\udce9.jpg"
    )
    out = redact_text(trace, secrets)
    for leak in ("AKIAEXAMPLE", "wJalr", "m1n10-pw", "K2:S2", "u:p@", "tok123", "eyJhbG"):
        assert leak not in out, leak
    assert "http://127.0.0.1:9000/bucket/k" in out and "s3://bucket/a.jpg" in out
    assert f"https://h/x.jpg?token={MASK}" in out
    assert out.endswith("/in/caf\\xe9.jpg") and out.encode("utf-8")  # valid UTF-8


def test_redact_text_leaves_ordinary_text_alone():
    text = "out of memory at 512x512 on cuda:0; see https://pytorch.org/docs and /in/a@2x.jpg"
    assert redact_text(text, ["ab", "", "cuda"]) == text.replace("cuda", MASK)  # short ignored
    assert redact_text("") == ""
    # a secret that is also a scheme does not shield the userinfo behind it
    assert redact_text("at http://u:pw-x@h/a", ["http"]) == "at ***://h/a"
    assert show_undecodable("plain é") == "plain é"
    assert show_undecodable("x\udcff\ud800y") == "x\\xff\ufffdy"
