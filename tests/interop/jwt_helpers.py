"""Keys, tokens and a JWKS key server for the JWT authentication tests.

* Keys: :func:`signing_key` makes a fresh key for any algorithm the broker accepts
  (``HS256/384/512``, ``RS256/384/512``, ``PS256/384/512``, ``ES256/384``, ``EdDSA``)
  with ``cryptography``; a :class:`SigningKey` signs tokens with ``PyJWT``
  (:meth:`SigningKey.token`), and gives its public half as a JWK or a PEM file.
* :func:`jwks` builds a JWKS document from keys; :func:`unsigned_token` and
  :func:`claims` help build tokens the broker must refuse.
* :class:`JwksServer`: a JWKS document over HTTPS on 127.0.0.1 (a free port), in a
  thread, with a certificate from a throw-away CA (:class:`TestCA`; its ``ca.pem`` is
  what the broker's ``jwks_ca_file`` names). The test can replace the document
  (key rotation), make the server fail or stall, and count the requests.

Nothing here needs the broker.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384")
ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS + ("EdDSA",)

# RFC 7518 section 3.2: an HMAC key at least as long as the hash (the broker refuses shorter).
_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


# --- keys ---------------------------------------------------------------------------------

def make_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ec_key(alg: str = "ES256") -> ec.EllipticCurvePrivateKey:
    """A P-256 key for ES256, a P-384 key for ES384."""
    return ec.generate_private_key(_EC_CURVES[alg]())


def make_ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def make_secret(alg: str = "HS256") -> bytes:
    """A random HMAC secret of the hash's length. Its last byte is not a line break: the
    broker drops line breaks at the end of a `secret_file` (an editor's or `echo`'s), which
    would leave a secret written to a file one byte short, refused (about 1 run in 128)."""
    while True:
        secret = secrets.token_bytes(_HMAC_BYTES[alg])
        if secret[-1:] not in (b"\n", b"\r"):
            return secret


def private_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private or public key (what ``public_key_file``
    takes)."""
    if hasattr(key, "public_key"):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(sub: str = "alice", ttl: float | None = 3600, **extra: Any) -> dict:
    """A claim set for ``sub``: ``iat`` now, ``exp`` in ``ttl`` seconds (none if ``ttl`` is
    None; a negative ``ttl`` gives an expired token), plus ``extra`` (``iss``, ``aud``,
    ``nbf``, ``acl``, a client id claim, ...)."""
    now = int(time.time())
    c: dict[str, Any] = {"sub": sub, "iat": now}
    if ttl is not None:
        c["exp"] = now + int(ttl)
    c.update(extra)
    return c


@dataclass
class SigningKey:
    """A private key (or HMAC secret) pinned to one algorithm, with its key id."""

    alg: str
    kid: str
    key: Any  # a cryptography private key, or bytes for HMAC

    def token(
        self,
        claim_set: dict | None = None,
        *,
        kid: str | None | bool = True,
        headers: dict | None = None,
        **claim_kwargs: Any,
    ) -> str:
        """A signed token. ``claim_set`` or, without it, ``claims(**claim_kwargs)``.
        ``kid``: True (default) puts this key's id in the header, False none, a string
        that string."""
        payload = claim_set if claim_set is not None else claims(**claim_kwargs)
        h = dict(headers or {})
        if kid is True:
            h["kid"] = self.kid
        elif isinstance(kid, str):
            h["kid"] = kid
        return jwt.encode(payload, self.key, algorithm=self.alg, headers=h or None)

    def public_jwk(self, *, with_alg: bool = True) -> dict:
        """The public key as a JWK (for HMAC the secret itself, ``kty: oct``)."""
        if self.alg in HMAC_ALGORITHMS:
            d = json.loads(HMACAlgorithm.to_jwk(self.key))
        elif self.alg in RSA_ALGORITHMS:
            d = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        elif self.alg in EC_ALGORITHMS:
            d = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        else:
            d = json.loads(OKPAlgorithm.to_jwk(self.key.public_key()))
        # Only the public parts (PyJWT's to_jwk of a public key has no others, but be sure).
        for private in ("d", "p", "q", "dp", "dq", "qi"):
            d.pop(private, None)
        d["kid"] = self.kid
        d["use"] = "sig"
        if with_alg:
            d["alg"] = self.alg
        return d

    def public_pem(self) -> bytes:
        if self.alg in HMAC_ALGORITHMS:
            raise ValueError("an HMAC secret has no public key")
        return public_pem(self.key)

    def verify(self, token: str, **options: Any) -> dict:
        """Decodes ``token`` with this key's public half (PyJWT), for checking helpers."""
        key = self.key if self.alg in HMAC_ALGORITHMS else self.key.public_key()
        return jwt.decode(token, key, algorithms=[self.alg], **options)


def signing_key(alg: str, kid: str | None = None) -> SigningKey:
    """A fresh key for ``alg``; ``kid`` defaults to a random one."""
    if alg in HMAC_ALGORITHMS:
        key: Any = make_secret(alg)
    elif alg in RSA_ALGORITHMS:
        key = make_rsa_key()
    elif alg in EC_ALGORITHMS:
        key = make_ec_key(alg)
    elif alg == "EdDSA":
        key = make_ed25519_key()
    else:
        raise ValueError(f"unknown algorithm {alg!r}")
    return SigningKey(alg=alg, kid=kid or f"{alg.lower()}-{secrets.token_hex(4)}", key=key)


def jwks(*keys: SigningKey | dict) -> dict:
    """A JWKS document of ``keys`` (SigningKeys or JWK dicts)."""
    return {"keys": [k.public_jwk() if isinstance(k, SigningKey) else k for k in keys]}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claim_set: dict | None = None, alg: str = "none", **header: Any) -> str:
    """``header.payload.`` with an empty signature: what an ``alg: none`` attack sends."""
    h = {"alg": alg, "typ": "JWT", **header}
    body = claim_set if claim_set is not None else claims()
    return (
        f"{_b64url(json.dumps(h).encode())}.{_b64url(json.dumps(body).encode())}."
    )


# --- a throw-away CA ------------------------------------------------------------------------

class TestCA:
    """A self-signed CA and a server certificate for 127.0.0.1 and localhost, written to
    ``directory``: ``ca_file`` (``ca.pem``), ``cert_file`` and ``key_file``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Starling JWKS test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(private_pem(key))
        self.key_file.chmod(0o600)


# --- the key server -------------------------------------------------------------------------

@dataclass
class _Served:
    status: int = 200
    body: bytes = b'{"keys": []}'
    delay: float = 0.0
    paths: list[str] = field(default_factory=list)


class JwksServer:
    """A JWKS document over HTTPS at ``url`` (``https://127.0.0.1:PORT/jwks.json``).

    ``GET /jwks.json`` answers the current document; other paths 404. ``requests`` counts
    the GETs of the document (each after a completed TLS handshake). Use it as a context
    manager, or call :meth:`stop`.
    """

    PATH = "/jwks.json"

    def __init__(self, document: dict | None = None, directory: Path | None = None):
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="starling-jwks-")
            directory = Path(self._tmp.name)
        self.ca = TestCA(Path(directory))
        self._lock = threading.Lock()
        self._served = _Served()
        self._count = 0
        self._cond = threading.Condition(self._lock)
        if document is not None:
            self.set_document(document)

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                with server._lock:
                    served = _Served(
                        server._served.status, server._served.body, server._served.delay
                    )
                    server._served.paths.append(self.path)
                    if path == JwksServer.PATH:
                        server._count += 1
                        server._cond.notify_all()
                if path != JwksServer.PATH:
                    served = _Served(404, b'{"error": "not found"}')
                if served.delay:
                    time.sleep(served.delay)
                self.send_response(served.status)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(served.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(served.body)
                self.close_connection = True

            def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.ca.cert_file, self.ca.key_file)
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # The handshake happens in each request's thread, on its first read, so that a
        # client that never completes one holds up nobody else.
        self._httpd.socket = ctx.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}{self.PATH}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="jwks-server", daemon=True,
        )
        self._thread.start()

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server's certificate (the broker's ``jwks_ca_file``)."""
        return self.ca.ca_file

    # The document.

    def set_document(self, document: dict | str | bytes, status: int = 200) -> None:
        if isinstance(document, dict):
            body = json.dumps(document).encode()
        elif isinstance(document, str):
            body = document.encode()
        else:
            body = bytes(document)
        with self._lock:
            self._served.status = status
            self._served.body = body

    def rotate(self, *keys: SigningKey | dict) -> None:
        """Serves a JWKS of ``keys`` from now on."""
        self.set_document(jwks(*keys))

    def fail(self, status: int = 503, body: bytes = b"unavailable") -> None:
        """Answers ``status`` until the next :meth:`set_document` / :meth:`rotate`."""
        self.set_document(body, status=status)

    def set_delay(self, seconds: float) -> None:
        """Waits this long before each answer (a slow key server)."""
        with self._lock:
            self._served.delay = seconds

    # What it was asked.

    @property
    def requests(self) -> int:
        with self._lock:
            return self._count

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return list(self._served.paths)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> int:
        """Waits until at least ``n`` GETs of the document came; returns the count. Raises
        TimeoutError if they did not come in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._count < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._count} JWKS requests, expected {n}")
                self._cond.wait(left)
            return self._count

    # Lifetime.

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "JwksServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def fetch(url: str, ca_file: Path, timeout: float = 5.0) -> tuple[int, bytes]:
    """GETs ``url`` trusting only ``ca_file`` (a test's view of what the broker fetches)."""
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
