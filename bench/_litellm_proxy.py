"""The LiteLLM proxy (one worker) in front of an OpenAI-compatible endpoint, for relay benchmarks.

The proxy runs from its own venv (`ensure_proxy_venv`), never the project's: `litellm[proxy]`
pins `litellm-proxy`, which is not on PyPI, so `requirements-litellm-proxy.txt` beside this file
pins the proxy runtime by hand. Usage:

    python = ensure_proxy_venv()
    async with start_litellm_proxy(python, "http://127.0.0.1:8900/v1", "sim-1", 4000) as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=PROXY_MASTER_KEY)
        ...  # model="sim-1"

`model_name` is both the upstream model and the name the proxy serves it under. A full LiteLLM
proxy config of the caller's (several model groups, `router_settings`, `os.environ/` keys) runs
as it is with `start_litellm_proxy_config`:

    async with start_litellm_proxy_config(python, Path("config.yaml"), 4000, ["primary"]) as url:
        ...

The proxy binds loopback only, has no database, and is told to use its bundled catalogs (cost
map, blog posts, policy templates) instead of fetching them. It refuses to start without a
strong master key, so every request needs `PROXY_MASTER_KEY` (random per process) as its API
key: the proxy gets it as `LITELLM_MASTER_KEY` in its environment, which it reads when the
config has no `general_settings.master_key`, so a caller's config needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from secrets import token_hex

import aiohttp

REQUIREMENTS = Path(__file__).with_name("requirements-litellm-proxy.txt")
DEFAULT_VENV = Path("/tmp/maestro-litellm-proxy-venv")
PROXY_MASTER_KEY = f"sk-{token_hex(32)}"
"""The proxy's master key, the API key for every request through it."""

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.25
LOG_TAIL_BYTES = 4000
_STAMP = ".maestro-requirements.sha256"

_OFFLINE_ENV = {
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_DISABLE_LATEST_RELEASE_CHECK": "true",
    "DISABLE_SCHEMA_UPDATE": "true",
    "DISABLE_ADMIN_UI": "true",
    "NO_DOCS": "true",
    "NO_REDOC": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
"""Everything the proxy would otherwise fetch comes from the copies bundled with litellm."""

_DROPPED_ENV = (
    "DATABASE_URL",
    "DIRECT_URL",
    "STORE_MODEL_IN_DB",
    "LITELLM_MASTER_KEY",
    "LITELLM_CONFIG_BUCKET_NAME",
    "REDIS_HOST",
    "REDIS_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)
"""A database or Redis in the caller's environment would make the proxy try to reach it."""


def ensure_proxy_venv(path: Path = DEFAULT_VENV) -> str:
    """Create the proxy's venv at `path` if missing or stale; return its python's path."""
    python = path / "bin" / "python"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = path / _STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return str(python)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(digest + "\n")
    return str(python)


def _config(upstream_base_url: str, model_name: str) -> str:
    """The proxy's config; JSON is YAML, so litellm's `yaml.safe_load` reads it."""
    return json.dumps(
        {
            "model_list": [
                {
                    "model_name": model_name,
                    "litellm_params": {
                        "model": f"openai/{model_name}",
                        "api_base": upstream_base_url,
                        "api_key": "sk-none",
                    },
                }
            ],
            "general_settings": {"master_key": PROXY_MASTER_KEY},
            "litellm_settings": {"telemetry": False},
        },
        indent=2,
    )


def _tail(log: Path) -> str:
    try:
        data = log.read_bytes()
    except OSError as exc:
        return f"<no log: {exc}>"
    return data[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace")


async def _get_json(session: aiohttp.ClientSession, url: str) -> object:
    """The JSON body of a 200 answer from the proxy, or None."""
    try:
        async with session.get(
            url,
            headers={"Authorization": f"Bearer {PROXY_MASTER_KEY}"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            if response.status != 200:
                return None
            body: object = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def _serves(session: aiohttp.ClientSession, origin: str, model_names: Sequence[str]) -> bool:
    """Whether the proxy is ready (`/health/readiness`) and lists every one of `model_names`
    (`/v1/models`)."""
    health = await _get_json(session, f"{origin}/health/readiness")
    if not isinstance(health, dict) or health.get("status") != "healthy":
        return False
    models = await _get_json(session, f"{origin}/v1/models")
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        return False
    listed = {entry.get("id") for entry in data if isinstance(entry, dict)}
    return all(name in listed for name in model_names)


def _check_port_free(port: int) -> None:
    """Fail early if something already listens there: it, not the proxy, would answer the polls."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"port {port} on 127.0.0.1 is in use: {exc}") from exc


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the proxy's process group, then SIGKILL it after `STOP_TIMEOUT_S`."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


@contextlib.asynccontextmanager
async def start_litellm_proxy(
    python: str, upstream_base_url: str, model_name: str, port: int
) -> AsyncIterator[str]:
    """Run the proxy with one worker on 127.0.0.1:`port` in front of one upstream model; yield
    its base URL (`.../v1`).

    Its stdout and stderr go to a temp log file, whose tail is in the error if it exits or does
    not serve `model_name` within `START_TIMEOUT_S`. The log's folder is removed on a clean exit.
    """
    _check_port_free(port)
    workdir = Path(tempfile.mkdtemp(prefix="maestro-litellm-proxy-"))
    config = workdir / "config.yaml"
    config.write_text(_config(upstream_base_url, model_name))
    async with _run_proxy(python, config, port, (model_name,), workdir, {}) as base_url:
        yield base_url


@contextlib.asynccontextmanager
async def start_litellm_proxy_config(
    python: str,
    config: Path,
    port: int,
    model_names: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[str]:
    """Run the proxy with one worker on 127.0.0.1:`port` on the LiteLLM proxy config file
    `config`, used as it is; yield its base URL (`.../v1`) once it lists every one of
    `model_names`.

    The config's `os.environ/NAME` references resolve in the proxy's environment: this
    process's (less `_DROPPED_ENV`), plus `env`, plus `LITELLM_MASTER_KEY` = `PROXY_MASTER_KEY`
    (so the config should name no `general_settings.master_key` of its own). Logs as
    `start_litellm_proxy` does.
    """
    _check_port_free(port)
    workdir = Path(tempfile.mkdtemp(prefix="maestro-litellm-proxy-"))
    absolute = await asyncio.to_thread(config.resolve)  # the proxy runs in `workdir`
    models = tuple(model_names)
    async with _run_proxy(python, absolute, port, models, workdir, dict(env or {})) as base_url:
        yield base_url


@contextlib.asynccontextmanager
async def _run_proxy(
    python: str,
    config: Path,
    port: int,
    model_names: tuple[str, ...],
    workdir: Path,
    extra_env: dict[str, str],
) -> AsyncIterator[str]:
    """The proxy on `config`, its log in `workdir` (removed on a clean exit)."""
    log = workdir / "proxy.log"
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(extra_env)
    env.update(_OFFLINE_ENV)
    env["LITELLM_MASTER_KEY"] = PROXY_MASTER_KEY
    origin = f"http://127.0.0.1:{port}"
    command = [
        python,
        "-m",
        "litellm.proxy.proxy_cli",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    clean = False
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(trust_env=False) as session:
            while not await _serves(session, origin, model_names):
                if process.returncode is not None or time.monotonic() > deadline:
                    why = (
                        f"exited with {process.returncode}"
                        if process.returncode is not None
                        else f"did not serve {list(model_names)} within {START_TIMEOUT_S:.0f} s"
                    )
                    raise RuntimeError(
                        f"LiteLLM proxy ({' '.join(command)}) {why}; log {log}:\n{_tail(log)}"
                    )
                await asyncio.sleep(POLL_INTERVAL_S)
        yield f"{origin}/v1"
        clean = True
    finally:
        await _stop(process)
        if clean:
            shutil.rmtree(workdir, ignore_errors=True)
