"""A real Docker registry (Debian's `docker-registry`, docker/distribution 2.8) for tests, and a push.

    async with registry_server(tmp_path) as reg:
        digest = await push_image(reg.url, "shop/api", "1.2.3", layer=b"hello")
        ...

The registry runs in the foreground as a child process on a free port, with its own config and
filesystem storage under the given directory (a temporary one when none is given), listening on
127.0.0.1 over plain HTTP; it is ready when `GET /v2/` answers, and it is stopped (SIGTERM, then
SIGKILL after 10 s, always waited for) when the context ends. Its log goes to `registry.log` beside
the config and is printed when the body of the `async with` fails, so pytest shows it.

`registry_server(users={"robot": "s3cret"})` turns on the registry's own htpasswd basic auth. The
htpasswd file needs bcrypt hashes; they are made with the `bcrypt` package when it is installed,
else with Python 3.11's `crypt` module (glibc's libxcrypt on Debian 12 knows `$2b$`). When neither
can, the test is skipped: that is a missing tool of the test machine, not a registry problem.

`push_image()` is what `docker push` does, without Docker: two blob uploads (the layer as a POST,
a PATCH with the bytes and a closing PUT — the chunked flow; the config as a POST and a single PUT
with the bytes — the monolithic flow the reference's curl script uses) and a PUT of the manifest
by tag. The manifest bytes are kept exactly as sent, so the returned digest is the sha256 of those
bytes, which must be what the registry answers in `Docker-Content-Digest`.

When the binary is missing the test is skipped with the reason, or fails when
`OPSLOOP_REQUIRE_SERVERS=1` (CI sets it), so a machine without the package can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import pytest
import yaml

from tests.conftest import require_servers
from tests.support import free_port

BINARY = "docker-registry"
PACKAGE = "docker-registry"
DEBIAN_PATH = "/usr/bin/docker-registry"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_START_TRIES = 3
_HTTP_TIMEOUT = 30.0


def need_registry() -> str:
    """The registry binary's path; skip the test (or fail it under OPSLOOP_REQUIRE_SERVERS=1) if absent."""
    path = shutil.which(BINARY) or (DEBIAN_PATH if Path(DEBIAN_PATH).is_file() else None)
    if path:
        return path
    reason = f"`{BINARY}` is not installed (apt-get install -y {PACKAGE})"
    if require_servers():
        pytest.fail(f"OPSLOOP_REQUIRE_SERVERS=1 but {reason}")
    pytest.skip(reason)


@dataclass
class RegistryServer:
    """A running registry: its base URL (`http://127.0.0.1:PORT`), port, directory and log."""

    url: str
    port: int
    directory: Path
    proc: asyncio.subprocess.Process
    users: Mapping[str, str]

    @property
    def storage(self) -> Path:
        return self.directory / "data"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first htpasswd user, for `push_image(auth=...)`; None without auth."""
        return next(iter(self.users.items()), None)

    def log(self) -> str:
        try:
            return (self.directory / "registry.log").read_text(errors="replace")
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM; SIGKILL if it has not exited within 10 s. Always waits for the exit."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd line, at the lowest cost (tests need speed, not strength)."""
    try:
        import bcrypt
    except ImportError:
        pass
    else:
        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode())
    if sys.version_info < (3, 13):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # `crypt` is deprecated (gone in 3.13)
            import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            return hashed
    pytest.skip("no bcrypt here for an htpasswd file (pip install bcrypt)")


def _config(directory: Path, port: int, users: Mapping[str, str]) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(directory / "data")}, "delete": {"enabled": True}},
        # A fixed secret: without one the registry logs a warning on every start.
        "http": {"addr": f"127.0.0.1:{port}", "secret": "opsloop-tests"},
        # Its storage health check would run every 10 s for nothing.
        "health": {"storagedriver": {"enabled": False}},
    }
    if users:
        htpasswd = directory / "htpasswd"
        htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in users.items()))
        config["auth"] = {"htpasswd": {"realm": "opsloop-tests", "path": str(htpasswd)}}
    return config


class _PortTaken(Exception):
    pass


async def _start(binary: str, directory: Path, port: int, users: Mapping[str, str]) -> RegistryServer:
    config_path = directory / "config.yml"
    config_path.write_text(yaml.safe_dump(_config(directory, port, users)))
    log_path = directory / "registry.log"
    with log_path.open("wb") as out:
        # The child keeps its own copy of the descriptor; ours can close at once.
        proc = await asyncio.create_subprocess_exec(
            binary, "serve", str(config_path), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    server = RegistryServer(f"http://127.0.0.1:{port}", port, directory, proc, dict(users))
    try:
        await _wait_ready(server)
    except BaseException:
        await server.stop()
        raise
    return server


async def _wait_ready(server: RegistryServer) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if server.proc.returncode is not None:
                text = server.log()
                if "address already in use" in text:
                    raise _PortTaken(text)
                raise RuntimeError(f"docker-registry exited with {server.proc.returncode}:\n{text[-3000:]}")
            try:
                async with session.get(f"{server.url}/v2/") as resp:
                    # 401 is an answer too: the htpasswd registry wants credentials even here.
                    if resp.status in (200, 401):
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"docker-registry was not ready within {_READY_TIMEOUT:g} s:\n{server.log()[-3000:]}")


@asynccontextmanager
async def registry_server(
    directory: Path | None = None, *, users: Mapping[str, str] | None = None
) -> AsyncIterator[RegistryServer]:
    """Run the real registry until the context ends (see the module docstring)."""
    binary = need_registry()
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opsloop-registry-")))
        directory.mkdir(parents=True, exist_ok=True)
        server: RegistryServer | None = None
        for attempt in range(_START_TRIES):
            # Another process can take the free port before the registry binds it: try a new one.
            try:
                server = await _start(binary, directory, free_port(), users or {})
                break
            except _PortTaken:
                if attempt == _START_TRIES - 1:
                    raise
        assert server is not None
        try:
            yield server
        except BaseException:
            print(f"--- docker-registry log ({server.directory / 'registry.log'}) ---\n{server.log()[-5000:]}")
            raise
        finally:
            await server.stop()


# --- pushing without Docker ---------------------------------------------------------------------------


def tiny_layer(text: str) -> bytes:
    """A real .tar.gz holding one file `hello.txt` with `text`, reproducible byte for byte."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(layer: bytes, *, oci: bool = False) -> tuple[bytes, bytes]:
    """(config, manifest) bytes of a one-layer image; Docker schema 2 or OCI media types."""
    try:
        diff_id = sha256_digest(gzip.decompress(layer))
    except (OSError, EOFError):
        diff_id = sha256_digest(layer)  # not gzip: the registry does not look inside anyway
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "size": len(config),
                "digest": sha256_digest(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": len(layer), "digest": sha256_digest(layer)}
            ],
        },
        separators=(",", ":"),
    ).encode()
    return config, manifest


async def push_image(
    url: str, repository: str, tag: str, *, layer: bytes, oci: bool = False, auth: tuple[str, str] | None = None
) -> str:
    """Push a one-layer image as `repository:tag`; the manifest digest (`sha256:…`) the registry stored.

    `layer` is the layer blob as stored (`tiny_layer()` makes a real one; the registry does not look
    inside). `oci` pushes OCI media types instead of Docker schema 2. `auth` is (user, password) for
    a registry with basic auth."""
    config, manifest = image_manifest(layer, oci=oci)
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    base = url.rstrip("/")
    async with aiohttp.ClientSession(
        headers=headers, timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT), raise_for_status=False
    ) as session:
        await _upload_blob(session, base, repository, layer, chunked=True)
        await _upload_blob(session, base, repository, config, chunked=False)
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        async with session.put(
            f"{base}/v2/{repository}/manifests/{tag}", data=manifest, headers={"Content-Type": media_type}
        ) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"PUT manifest {repository}:{tag} -> {resp.status}: {body}")
            stored = resp.headers.get("Docker-Content-Digest")
    digest = sha256_digest(manifest)
    if stored != digest:
        raise RuntimeError(f"the registry stored {repository}:{tag} as {stored}, the bytes sent are {digest}")
    return digest


async def _upload_blob(
    session: aiohttp.ClientSession, base: str, repository: str, data: bytes, *, chunked: bool
) -> None:
    digest = sha256_digest(data)
    async with session.head(f"{base}/v2/{repository}/blobs/{digest}") as resp:
        if resp.status == 200:
            return  # already there (another tag shares the layer): what docker push skips too
    async with session.post(f"{base}/v2/{repository}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST blob upload to {repository} -> {resp.status}: {await resp.text()}")
        location = _location(base, resp)
    if chunked:
        async with session.patch(location, data=data, headers={"Content-Type": "application/octet-stream"}) as resp:
            if resp.status != 202:
                raise RuntimeError(f"PATCH blob {digest} -> {resp.status}: {await resp.text()}")
            location = _location(base, resp)
        body = b""
    else:
        body = data
    # The upload URL already has a query (`_state=…`): the digest joins it.
    sep = "&" if "?" in location else "?"
    async with session.put(
        f"{location}{sep}digest={digest}", data=body, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        if resp.status != 201:
            raise RuntimeError(f"PUT blob {digest} -> {resp.status}: {await resp.text()}")


def _location(base: str, resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise RuntimeError(f"{resp.method} {resp.url} -> {resp.status} without a Location")
    # 2.8 answers an absolute URL; the spec allows a relative one.
    return urljoin(base + "/", location)
