"""Firebase ID tokens for tests: signed with a test RSA key whose X.509 certificate a local
HTTP server publishes the way Google publishes its securetoken certificates."""

from __future__ import annotations

import datetime
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

PROJECT_ID = "chatify-test"


def _certificate(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class TokenIssuer:
    """Signs ID tokens and serves the matching certificates on 127.0.0.1."""

    kid = "test-key-1"

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        body = json.dumps({self.kid: _certificate(self._key)}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def certs_url(self) -> str:
        """Where the certificates are published."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/certs"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def token(
        self,
        uid: str,
        *,
        admin: bool = False,
        expires_in: int = 3600,
        audience: str = PROJECT_ID,
        issuer: str | None = None,
        wrong_key: bool = False,
    ) -> str:
        """An ID token as Firebase Auth would issue it (or spoiled as asked)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or f"https://securetoken.google.com/{PROJECT_ID}",
            "aud": audience,
            "auth_time": now - 60,
            "user_id": uid,
            "sub": uid,
            "iat": min(now, now + expires_in - 60),
            "exp": now + expires_in,
            "firebase": {"identities": {}, "sign_in_provider": "anonymous"},
        }
        if admin:
            claims["admin"] = True
        key = self._other_key if wrong_key else self._key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})


def tampered(token: str) -> str:
    """The token with its payload changed after signing (the signature no longer matches)."""
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["sub"] = claims["user_id"] = "mallory"
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{forged}.{signature}"
