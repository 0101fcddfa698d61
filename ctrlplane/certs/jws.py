"""The JSON Web Signatures of ACME (RFC 8555 section 6.2): ES256 with a P-256 account key,
and HS256 for an External Account Binding (section 7.3.4)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ctrlplane.certs.issuer import key_pem, new_key
from ctrlplane.files import private_dir, write_private


def b64(data: bytes) -> str:
    """base64url without padding, as JOSE writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AccountKey:
    """An ACME account key: signs requests and names the account by its JWK.

    Args:
        key: A P-256 private key.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the account key must be a P-256 key")
        self._key = key
        numbers = key.public_key().public_numbers()
        self.jwk: dict[str, str] = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64(numbers.x.to_bytes(32, "big")),
            "y": b64(numbers.y.to_bytes(32, "big")),
        }

    @classmethod
    def load_or_create(cls, path: Path) -> AccountKey:
        """The key stored at ``path``; a new one is stored first (mode 0600) if there is none.

        One key for the life of the data directory: the CA recognises the
        account by it, so renewals reuse the account and its authorizations.
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            private_dir(path.parent)
            key = new_key()
            write_private(path, key_pem(key))
            return cls(key)
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC private key; delete it to make a new one")
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return cls(loaded)

    def thumbprint(self) -> str:
        """The JWK thumbprint (RFC 7638) that key authorizations end with."""
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        return b64(hashlib.sha256(canonical).digest())

    def sign(self, url: str, nonce: str, payload: Any | None, *, kid: str | None = None) -> bytes:
        """A flattened JWS of ``payload`` for ``url``; ``None`` is a POST-as-GET.

        With ``kid`` (the account URL) the account is named by it; without,
        the public key itself goes along (only new-account requests do that).
        """
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        header = b64(json.dumps(protected).encode())
        body = "" if payload is None else b64(json.dumps(payload).encode())
        der = self._key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS wants the raw r || s, not the DER that cryptography gives.
        signature = b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return json.dumps({"protected": header, "payload": body, "signature": signature}).encode()


def read_hmac_key(path: Path) -> bytes:
    """The MAC key of an External Account Binding, stored base64url as CAs hand it out.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no base64url key. The message never shows the key.
    """
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"{path} is empty: write the MAC key the CA gave (base64url)")
    bad = ValueError(f"{path} does not hold a base64url MAC key")
    if not _B64URL_RE.fullmatch(text):
        raise bad
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except binascii.Error:
        raise bad from None


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+=*")


def external_account_binding(
    kid: str, mac_key: bytes, jwk: dict[str, str], url: str
) -> dict[str, str]:
    """The ``externalAccountBinding`` of a new-account request (RFC 8555 section 7.3.4).

    A flattened JWS, HS256 under ``mac_key``, whose payload is the account's
    public ``jwk``: the CA learns that whoever holds the MAC key vouches for it.
    """
    protected = b64(json.dumps({"alg": "HS256", "kid": kid, "url": url}).encode())
    payload = b64(json.dumps(jwk).encode())
    mac = hmac.HMAC(mac_key, hashes.SHA256())
    mac.update(f"{protected}.{payload}".encode())
    return {"protected": protected, "payload": payload, "signature": b64(mac.finalize())}
