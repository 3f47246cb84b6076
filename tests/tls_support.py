"""A throwaway PKI for TLS tests, made with the `openssl` CLI (no Python crypto package needed).

`make_pki(folder)` writes a CA, a server certificate for `localhost` and `127.0.0.1`, a client
certificate that CA signed, and a client certificate from a second, untrusted CA. EC P-256 keys:
quick to generate. Valid for two days, which outlasts any test run.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    """A client certificate from another CA: not trusted by the server."""
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, request = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    extension_file = folder / f"{name}.ext"
    extension_file.write_text(extensions)
    _openssl("req", "-new", *_EC, "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-sha256",
        "-extfile", str(extension_file), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "maestro-test-ca")
    rogue_ca = _ca(folder, "rogue-ca")
    server = _leaf(
        folder,
        "server",
        ca,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    client_extensions = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    client = _leaf(folder, "data-plane", ca, client_extensions)
    rogue = _leaf(folder, "rogue", rogue_ca, client_extensions)
    return Pki(ca[0], *server, *client, *rogue)
