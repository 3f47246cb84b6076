"""A real OCI registry for the tests: CNCF Distribution on a free loopback port.

`MAESTRO_TEST_REGISTRY` (`host:port`, plain HTTP, no auth) points the tests at a registry someone
else runs; otherwise one is started from Debian's `docker-registry` binary (`.ci/run` installs
it) with its own config file and filesystem storage in a temporary directory. The package's
systemd service plays no part: this process listens on 127.0.0.1 only, speaks plain HTTP (hence
`insecure=True` in the clients) and has no auth. `RunningRegistry.storage` is the storage root,
so a test can reach the blobs on disk (`docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BINARY = "/usr/bin/docker-registry"


@dataclass(frozen=True, slots=True)
class RunningRegistry:
    address: str  # host:port
    storage: Path | None  # the filesystem storage root; None for an external registry

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes."""
        if self.storage is None:
            raise RuntimeError("an external registry's storage is not reachable")
        algorithm, hexdigest = digest.split(":", 1)
        return (
            self.storage / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest
        ) / "data"


def _binary() -> str:
    if Path(BINARY).exists():
        return BINARY
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found:
        return found
    raise RuntimeError(
        "the OCI registry is not installed (apt-get install docker-registry); .ci/run does it"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(address: str, auth: bool) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=1) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as exc:
        return auth and exc.code == 401
    except (urllib.error.URLError, OSError):
        return False


_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: maestro-tests-only
"""

_AUTH = """\
auth:
  htpasswd:
    realm: maestro-tests
    path: {path}
"""

# A user for `registry_server(htpasswd=...)`: bcrypt (cost 4) of TEST_PASSWORD, precomputed so
# the tests need no bcrypt library.
TEST_USER = "maestro"
TEST_PASSWORD = "maestro-test-password"
TEST_HTPASSWD = f"{TEST_USER}:$2b$04$GU7JJxS6xISU2tivM27ea.z58k8WNkRLSedONTQtZkBwaW18BzEQu\n"


@contextlib.contextmanager
def registry_server(htpasswd: str = "") -> Iterator[RunningRegistry]:
    """Yields a running registry; stops it and removes its storage afterwards. With `htpasswd`
    (file lines `user:bcrypt-hash`, e.g. TEST_HTPASSWD) it demands HTTP Basic auth."""
    external = os.environ.get("MAESTRO_TEST_REGISTRY")
    if external and not htpasswd:
        yield RunningRegistry(address=external, storage=None)
        return
    binary = _binary()
    root = Path(tempfile.mkdtemp(prefix="maestro-registry-"))
    storage = root / "storage"
    storage.mkdir()
    port = _free_port()
    config = root / "config.yml"
    text = _CONFIG.format(storage=storage, port=port)
    if htpasswd:
        (root / "htpasswd").write_text(htpasswd)
        text += _AUTH.format(path=root / "htpasswd")
    config.write_text(text)
    log = (root / "registry.log").open("wb")
    # The Debian binary is `registry serve <config>` under another name.
    server = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(address, auth=bool(htpasswd)):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not start: {(root / 'registry.log').read_text()}"
                )
            time.sleep(0.05)
        yield RunningRegistry(address=address, storage=storage)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
