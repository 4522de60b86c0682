"""Checks of jwt_helpers itself (keys, tokens, the HTTPS JWKS server); no broker needed."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from jwt_helpers import (
    ALGORITHMS,
    HMAC_ALGORITHMS,
    JwksServer,
    claims,
    fetch,
    jwks,
    signing_key,
    unsigned_token,
)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_signs_and_verifies(alg):
    k = signing_key(alg, kid=f"k-{alg}")
    token = k.token(sub="bob", aud="mqtt", client_id="dev1")
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": f"k-{alg}", "typ": "JWT"}
    body = k.verify(token, audience="mqtt")
    assert body["sub"] == "bob" and body["client_id"] == "dev1"
    assert body["exp"] > body["iat"]

    # The JWK alone verifies it, and carries no private part.
    jwk = k.public_jwk()
    assert jwk["kid"] == f"k-{alg}" and jwk["alg"] == alg and jwk["use"] == "sig"
    if alg not in HMAC_ALGORITHMS:
        assert "d" not in jwk
        load_pem_public_key(k.public_pem())
    decoded = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=[alg], audience="mqtt"
    )
    assert decoded["sub"] == "bob"

    # Another key of the same algorithm does not.
    with pytest.raises(jwt.InvalidSignatureError):
        signing_key(alg).verify(token, audience="mqtt")


def test_tokens_the_broker_must_refuse():
    k = signing_key("RS256", kid="r1")
    with pytest.raises(jwt.ExpiredSignatureError):
        k.verify(k.token(ttl=-60))
    assert "exp" not in jwt.decode(k.token(ttl=None), options={"verify_signature": False})
    assert jwt.get_unverified_header(k.token(kid=False)) == {"alg": "RS256", "typ": "JWT"}
    assert jwt.get_unverified_header(k.token(kid="other"))["kid"] == "other"

    none = unsigned_token(claims(sub="root"))
    header, payload, signature = none.split(".")
    assert signature == ""
    assert jwt.get_unverified_header(none)["alg"] == "none"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(none, k.public_pem(), algorithms=["RS256"])


def test_the_server_serves_rotates_fails_and_counts():
    k1, k2 = signing_key("ES256", kid="k1"), signing_key("RS256", kid="k2")
    with JwksServer(jwks(k1)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        status, body = fetch(server.url, server.ca_file)
        assert status == 200
        assert [k["kid"] for k in json.loads(body)["keys"]] == ["k1"]
        assert server.requests == 1

        server.rotate(k1, k2)
        status, body = fetch(server.url, server.ca_file)
        doc = json.loads(body)
        assert [k["kid"] for k in doc["keys"]] == ["k1", "k2"]
        # The served key verifies the other's tokens: what the broker will do.
        assert jwt.decode(k2.token(), jwt.PyJWK(doc["keys"][1]).key, algorithms=["RS256"])

        server.fail(503)
        assert fetch(server.url, server.ca_file)[0] == 503
        server.set_document({"keys": []})
        assert fetch(server.url, server.ca_file) == (200, b'{"keys": []}')
        assert server.wait_for_requests(4, timeout=1) == 4

        # Other paths are 404 and not counted.
        base = server.url.rsplit("/", 1)[0]
        assert fetch(base + "/other", server.ca_file)[0] == 404
        assert server.requests == 4
        assert "/other" in server.paths

        # Without its CA the certificate is not trusted.
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            urllib.request.urlopen(server.url, context=ssl.create_default_context(), timeout=5)
        assert server.requests == 4

        with pytest.raises(TimeoutError):
            server.wait_for_requests(5, timeout=0.2)


def test_a_slow_server_and_stopping(tmp_path):
    import threading
    import time

    server = JwksServer(jwks(signing_key("EdDSA", kid="e")))
    server.set_delay(0.3)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch(server.url, server.ca_file)[0]))
        for _ in range(3)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Served concurrently: three slow answers take about one delay, not three.
    assert results == [200, 200, 200]
    assert time.monotonic() - start < 0.85
    port = server.port
    ca = tmp_path / "ca.pem"
    ca.write_bytes(server.ca_file.read_bytes())
    server.stop()
    # Stopped: nothing listens any more.
    with pytest.raises(urllib.error.URLError) as e:
        fetch(f"https://127.0.0.1:{port}/jwks.json", ca, timeout=2)
    assert isinstance(e.value.reason, ConnectionRefusedError)
