"""JWT authentication against tokens made by PyJWT and keys made by ``cryptography``
(``jwt_helpers.py``), with paho-mqtt clients: every algorithm, the claims the broker checks
(exp, nbf, iss, aud, the client id claim), the attacks it must refuse (a wrong key,
``alg: none``, HS/RS confusion), a JWKS served over HTTPS by a local server and rotated under
the broker (an unknown ``kid`` makes it fetch the new set), ACL claims enforced on publish
and subscribe, and a connection closed with DISCONNECT 0xA0 when its token expires.
"""

from __future__ import annotations

import time
import urllib.request

import jwt as pyjwt
import pytest

from conftest import BrokerProcess
from helpers import V5, V311, Client, unique_id, wait_for
from jwt_helpers import JwksServer, jwks, signing_key, unsigned_token

pytestmark = pytest.mark.starling_only

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
ALGORITHMS = [
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "EdDSA",
]


def start(tmp_path, jwt_table: str, listener: str = "") -> BrokerProcess:
    b = BrokerProcess(tmp_path, f"""
[[listener]]
bind = "127.0.0.1:1883"
allow_anonymous = false
auth = ["jwt"]
{listener}

[auth.jwt]
{jwt_table}
""")
    b.start()
    return b


def connect(b: BrokerProcess, token: str, *, user: str = "ignored", client_id: str | None = None,
            expect_rc: int | None = 0, version: int = V5) -> Client:
    c = Client(b.address, client_id=client_id or unique_id("jwt"), version=version, connect=False)
    c.c.username_pw_set(user, token)
    c.connect(expect_rc=expect_rc)
    return c


def metrics(b: BrokerProcess) -> str:
    with urllib.request.urlopen(f"{b.http_url}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


def test_every_algorithm_through_a_jwks_and_the_attacks_refused(tmp_path):
    keys = [signing_key(alg) for alg in ALGORITHMS]
    with JwksServer(jwks(*keys), directory=tmp_path / "ca") as server:
        algs = ", ".join(f'"{a}"' for a in ALGORITHMS)
        b = start(tmp_path, f"""
algorithms = [{algs}]
jwks_url = "{server.url}"
jwks_ca_file = "{server.ca.ca_file}"
issuer = "https://idp.example"
audience = "mqtt"
""")
        try:
            good = dict(iss="https://idp.example", aud="mqtt")
            for k in keys:
                c = connect(b, k.token(sub=f"user-{k.alg}", **good))
                c.close()
            rs = keys[ALGORITHMS.index("RS256")]
            hs = keys[ALGORITHMS.index("HS256")]
            refused = {
                "expired": rs.token(sub="a", ttl=-120, **good),
                "not yet valid": rs.token(sub="a", nbf=int(time.time()) + 600, **good),
                "wrong issuer": rs.token(sub="a", iss="https://evil.example", aud="mqtt"),
                "wrong audience": rs.token(sub="a", iss="https://idp.example", aud="other"),
                "no exp": rs.token(sub="a", ttl=None, **good),
                "wrong key": signing_key("RS256", kid=rs.kid).token(sub="a", **good),
                "alg none": unsigned_token({"sub": "a", "exp": int(time.time()) + 60, **good}, kid=rs.kid),
                # The RSA public key used as an HMAC secret, under the RSA key's kid: the
                # key is pinned to RS256, so this is refused whatever the secret.
                "HS/RS confusion": pyjwt.encode(
                    {"sub": "a", "exp": int(time.time()) + 60, **good},
                    rs.public_pem(), algorithm="HS256", headers={"kid": rs.kid},
                ) if _pyjwt_signs_with_pem() else hs.token(sub="a", kid=rs.kid, **good),
            }
            for what, token in refused.items():
                c = connect(b, token, expect_rc=None)
                assert c.connack.rc in (BAD_CREDENTIALS, NOT_AUTHORIZED), f"{what}: {c.connack.rc:#x}"
                c.close()
            # Not a JWT at all: no backend claims it, refused as bad credentials.
            connect(b, "not-a-token", expect_rc=BAD_CREDENTIALS).close()
            text = metrics(b)
            assert sample(text, "starling_jwt_verified_total") >= len(ALGORITHMS)
            assert sample(text, "starling_jwt_denied_total", reason="expired") >= 1
            assert sample(text, "starling_jwt_denied_total", reason="wrong_issuer") >= 1
            assert sample(text, "starling_jwt_denied_total", reason="wrong_audience") >= 1
        finally:
            b.stop()


def _pyjwt_signs_with_pem() -> bool:
    """Newer PyJWT refuses to use a PEM public key as an HMAC secret (its own guard against
    this attack); the test then signs with an HMAC secret under the RSA key's kid."""
    try:
        pyjwt.encode({"a": 1}, signing_key("RS256").public_pem(), algorithm="HS256")
        return True
    except Exception:
        return False


def test_a_rotated_jwks_is_fetched_for_an_unknown_kid(tmp_path):
    old = signing_key("ES256")
    with JwksServer(jwks(old), directory=tmp_path / "ca") as server:
        b = start(tmp_path, f"""
algorithms = ["ES256"]
jwks_url = "{server.url}"
jwks_ca_file = "{server.ca.ca_file}"
jwks_refresh_secs = 3600
jwks_min_refresh_secs = 1
""")
        try:
            connect(b, old.token(sub="a")).close()
            fetched = server.requests
            new = signing_key("ES256")
            server.rotate(new)
            # The new kid is unknown: the CONNECT waits for one fetch of the set, then passes.
            connect(b, new.token(sub="b")).close()
            assert server.requests == fetched + 1
            # The old key is gone from the set.
            connect(b, old.token(sub="a"), expect_rc=None).close()
        finally:
            b.stop()


def test_a_public_key_file_and_a_secret(tmp_path):
    rs = signing_key("RS256")
    pem = tmp_path / "pub.pem"
    pem.write_bytes(rs.public_pem())
    b = start(tmp_path, f'algorithms = ["RS256"]\npublic_key_file = "{pem}"\n')
    try:
        connect(b, rs.token(sub="a", kid=False)).close()
        connect(b, signing_key("RS256").token(sub="a"), expect_rc=BAD_CREDENTIALS).close()
    finally:
        b.stop()


def test_acl_claim_and_client_id_claim(tmp_path):
    hs = signing_key("HS256")
    secret = tmp_path / "secret"
    secret.write_bytes(hs.key)
    b = start(tmp_path, f"""
algorithms = ["HS256"]
secret_file = "{secret}"
client_id_claim = "cid"
""")
    try:
        acl = {"pub": ["devices/%c/up"], "sub": ["devices/%c/down", "broadcast/#"]}
        token = hs.token(sub="dev", cid="d1", acl=acl)
        connect(b, token, client_id="d2", expect_rc=NOT_AUTHORIZED).close()
        c = connect(b, token, client_id="d1")
        assert c.subscribe("devices/d1/down", qos=1) == [1]
        assert c.subscribe("broadcast/#", qos=1) == [1]
        assert c.subscribe("devices/#", qos=1) == [NOT_AUTHORIZED]
        c.publish("devices/d1/up", b"ok", qos=1)
        c.publish("devices/d2/up", b"no", qos=1)
        wait_for(lambda: len(c.publish_acks) == 2, what="two PUBACKs")
        codes = [rc.value for _m, rc, _p in c.publish_acks]
        assert codes[1] == NOT_AUTHORIZED, codes
        assert codes[0] != NOT_AUTHORIZED, codes
        c.close()
        # 3.1.1: the ACL claim applies the same (its refused publish is dropped silently).
        c3 = connect(b, token, client_id="d1", version=V311)
        assert c3.subscribe("devices/#", qos=1) == [0x80]
        c3.close()
    finally:
        b.stop()


def test_a_connection_is_closed_when_its_token_expires(tmp_path):
    hs = signing_key("HS256")
    secret = tmp_path / "secret"
    secret.write_bytes(hs.key)
    b = start(tmp_path, f'algorithms = ["HS256"]\nsecret_file = "{secret}"\nclock_skew_secs = 0\n')
    try:
        c = connect(b, hs.token(sub="a", ttl=2))
        d = c.wait_disconnected(timeout=10)
        assert d.rc == 0xA0, f"DISCONNECT {d.rc:#x}"
        c.close()
        assert sample(metrics(b), "starling_credentials_expired_total") == 1
    finally:
        b.stop()
