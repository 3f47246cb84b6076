"""The SLO load harness as a library: drive streaming chat completions, measure, judge.

`run_load` runs `concurrency` workers, each looping "start a request, stream it to the end,
record it", until the measured window's duration or request count is reached; an optional warm-up
phase runs the same way first and is discarded. Every phase is bounded in time and count, and a
request in flight when the window closes is waited for (its own deadline bounds the wait), so
the slowest requests are not left out of the tail.

What is recorded, per successful request, in HDR histograms of microseconds:

- TTFT: request start to the first chunk with content (OpenAI) or the first `delta` with text
  (gRPC);
- ITL: the raw gap between consecutive content chunks, as the client sees them. Chunks that
  arrive in the same network read get a gap of 0: that is what a caller experiences;
- latency: request start to the end of the stream.

Failed requests count by kind (`http_429`, `http_503`, `deadline`, `truncated`, `grpc_unavailable`
...) and their partial output still counts in the token totals. `slo_verdict` compares a report
with a declared `SloTarget`; `render` formats both for a terminal.

The client is kept cheap because it shares the machine's cores with the server it measures: the
OpenAI body is serialised once, each network read of SSE events is parsed with one orjson call,
and per-token work is a timestamp and an append.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
import grpc
import orjson
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from maestro.v1 import common_pb2, inference_service_pb2, inference_service_pb2_grpc

MAX_DURATION_S = 600.0
MAX_WARMUP_S = 120.0
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 1024
MAX_TOKENS = 1_000_000
MAX_REQUEST_TIMEOUT_S = 600.0
DEFAULT_PROMPT = "Write a short paragraph about the sea."
_HISTOGRAM_MAX_US = 3_600_000_000  # one hour; larger values are clamped to it
_HISTOGRAM_DIGITS = 3
_PHASE_GRACE_S = 5.0
"""Slack on top of duration + request timeout before a phase is torn down regardless."""
_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


class TargetKind(enum.StrEnum):
    """What the harness talks to."""

    OPENAI = "openai"
    GRPC = "grpc"


def is_loopback_target(target: str, kind: TargetKind) -> bool:
    """True when `target` names this machine: load is only ever driven at loopback addresses."""
    if kind is TargetKind.OPENAI:
        host = urlsplit(target).hostname
    elif target.startswith("unix:"):
        return True
    else:
        host = urlsplit("//" + target.removeprefix("dns:///")).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load run. Limits are checked here so library callers get them as well as the CLI."""

    target: str
    target_kind: TargetKind = TargetKind.OPENAI
    model: str = "sim-1"
    project: str = "demo"
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 8
    duration_s: float = 10.0
    max_requests: int = 100_000
    max_tokens: int = 64
    prompt: str = DEFAULT_PROMPT
    request_timeout_s: float = 30.0
    warmup_s: float = 0.0
    include_usage: bool = True
    """OpenAI only: ask for the usage chunk, whose completion_tokens are reported next to ours."""

    def __post_init__(self) -> None:
        problems = [
            problem
            for ok, problem in (
                (1 <= self.concurrency <= MAX_CONCURRENCY, f"concurrency: 1..{MAX_CONCURRENCY}"),
                (0 < self.duration_s <= MAX_DURATION_S, f"duration_s: (0, {MAX_DURATION_S:g}]"),
                (1 <= self.max_requests <= MAX_REQUESTS, f"max_requests: 1..{MAX_REQUESTS}"),
                (1 <= self.max_tokens <= MAX_TOKENS, f"max_tokens: 1..{MAX_TOKENS}"),
                (
                    0 < self.request_timeout_s <= MAX_REQUEST_TIMEOUT_S,
                    f"request_timeout_s: (0, {MAX_REQUEST_TIMEOUT_S:g}]",
                ),
                (0 <= self.warmup_s <= MAX_WARMUP_S, f"warmup_s: [0, {MAX_WARMUP_S:g}]"),
                (bool(self.model), "model: must not be empty"),
                (
                    is_loopback_target(self.target, self.target_kind),
                    f"target: {self.target!r} is not a loopback address (loopback only)",
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError("invalid load config: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        """The settings without the API key."""
        data = asdict(self)
        del data["api_key"]
        data["target_kind"] = self.target_kind.value
        return data


# --- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Percentiles:
    """A histogram's summary in milliseconds; NaN everywhere when it holds no values."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def empty(cls) -> Percentiles:
        nan = math.nan
        return cls(0, nan, nan, nan, nan, nan, nan)

    @classmethod
    def of(cls, histogram: Any) -> Percentiles:
        """Summarise an `HdrHistogram` of microseconds."""
        count = int(histogram.get_total_count())
        if count == 0:
            return cls.empty()
        p50, p90, p99, p999 = (histogram.get_value_at_percentile(q) / 1000 for _, q in _PERCENTILES)
        return cls(
            count,
            p50,
            p90,
            p99,
            p999,
            histogram.get_max_value() / 1000,
            histogram.get_mean_value() / 1000,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            name: (None if isinstance(value, float) and math.isnan(value) else value)
            for name, value in asdict(self).items()
        }


def _histogram() -> Any:
    return HdrHistogram(1, _HISTOGRAM_MAX_US, _HISTOGRAM_DIGITS)


class _Trace:
    """What one request produced, timestamped in perf_counter nanoseconds."""

    __slots__ = ("first_ns", "gaps_ns", "last_ns", "start_ns", "tokens", "usage_tokens")

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.first_ns: int | None = None
        self.last_ns = start_ns
        self.gaps_ns: list[int] = []
        self.tokens = 0
        self.usage_tokens: int | None = None

    def content(self, now_ns: int, tokens: int) -> None:
        """A chunk with content arrived at `now_ns` carrying `tokens` tokens."""
        if self.first_ns is None:
            self.first_ns = now_ns
        else:
            self.gaps_ns.append(now_ns - self.last_ns)
        self.last_ns = now_ns
        self.tokens += tokens


class _Recorder:
    """Counters and histograms of one phase; the live counters feed the progress line."""

    def __init__(self) -> None:
        self.ttft = _histogram()
        self.itl = _histogram()
        self.latency = _histogram()
        self.requests = 0
        self.succeeded = 0
        self.errors: Counter[str] = Counter()
        self.tokens = 0
        self.usage_tokens = 0
        self.usage_reported = 0
        self.in_flight = 0

    def add(self, trace: _Trace, error: str | None, end_ns: int) -> None:
        self.requests += 1
        self.tokens += trace.tokens
        if trace.usage_tokens is not None:
            self.usage_tokens += trace.usage_tokens
            self.usage_reported += 1
        if error is not None:
            self.errors[error] += 1
            return
        self.succeeded += 1
        _record_us(self.latency, end_ns - trace.start_ns)
        if trace.first_ns is not None:
            _record_us(self.ttft, trace.first_ns - trace.start_ns)
        itl = self.itl
        for gap in trace.gaps_ns:
            _record_us(itl, gap)


def _record_us(histogram: Any, ns: int) -> None:
    histogram.record_value(min(ns // 1000, _HISTOGRAM_MAX_US))


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The measured window's figures. Latency percentiles cover successful requests only."""

    config: LoadConfig
    requests: int
    succeeded: int
    errors: Mapping[str, int]
    elapsed_s: float
    """From the window's start to the end of its last request."""
    tokens: int
    """Completion tokens received, failed requests' partial output included."""
    ttft: Percentiles
    itl: Percentiles
    latency: Percentiles
    usage_tokens: int | None = None
    """Completion tokens as the server reported them (usage chunks, `done.usage`), summed over
    the requests that reported any; None when none did. A cross-check of `tokens`."""
    warmup_requests: int = 0

    @property
    def failed(self) -> int:
        return self.requests - self.succeeded

    @property
    def error_rate(self) -> float:
        """Failed requests' share; NaN when nothing was measured."""
        return self.failed / self.requests if self.requests else math.nan

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "error_rate": _json_float(self.error_rate),
            "errors": dict(sorted(self.errors.items())),
            "elapsed_s": self.elapsed_s,
            "rps": _json_float(self.rps),
            "tokens": self.tokens,
            "usage_tokens": self.usage_tokens,
            "tokens_per_s": _json_float(self.tokens_per_s),
            "ttft_ms": self.ttft.to_json(),
            "itl_ms": self.itl.to_json(),
            "latency_ms": self.latency.to_json(),
            "warmup_requests": self.warmup_requests,
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


# --- the OpenAI-compatible client -----------------------------------------------------------


class StreamError(Exception):
    """A stream that cannot be measured further; `kind` is its error count's key."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class SseParser:
    """Incremental parser of an SSE body of JSON `data:` events, fed network reads.

    `feed` returns the decoded payloads of the events completed by a read; `[DONE]` sets `done`.
    Handles CRLF line ends, comments, multi-line data and events split across reads.
    """

    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer + data
        if b"\r" in buffer:
            # A lone \r at the end may be half of a CRLF: it is rejoined on the next read.
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = buffer.split(b"\n\n")
        payloads = []
        for event in events:
            payload = _event_data(event)
            if payload is None:
                continue
            if payload == b"[DONE]":
                self.done = True
            else:
                payloads.append(payload)
        if not payloads:
            return []
        try:
            # One parse per network read rather than per event.
            decoded: list[Any] = orjson.loads(b"[" + b",".join(payloads) + b"]")
        except orjson.JSONDecodeError:
            raise StreamError("protocol") from None
        return decoded


def _event_data(event: bytes) -> bytes | None:
    """The `data` of one SSE event (its data lines joined by newlines), None when it has none."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the usual case: one `data: ` line
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def chunk_tokens(chunk: Any) -> int | None:
    """Tokens in a `chat.completion.chunk`: None without content in `choices[0].delta`, else
    its `maestro.token_count` (a coalesced chunk carries several) or 1."""
    if not isinstance(chunk, dict):
        return None
    if "error" in chunk:
        raise StreamError("stream_error")
    choices = chunk.get("choices")
    if not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    if not isinstance(delta, dict) or not delta.get("content"):
        return None
    extra = chunk.get("maestro")
    if isinstance(extra, dict):
        count = extra.get("token_count")
        if type(count) is int and count >= 0:
            return count
    return 1


def _usage_tokens(chunk: Any) -> int | None:
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if type(tokens) is int else None


class _Client(Protocol):
    async def stream(self, trace: _Trace) -> str | None:
        """Run one request into `trace`; the error kind, or None when it succeeded."""

    async def aclose(self) -> None: ...


class _OpenAIClient:
    """POST /chat/completions with `stream: true` over one pooled aiohttp session."""

    def __init__(self, config: LoadConfig) -> None:
        body: dict[str, Any] = {
            "model": config.model,
            "messages": [{"role": "user", "content": config.prompt}],
            "max_tokens": config.max_tokens,
            "stream": True,
        }
        if config.include_usage:
            body["stream_options"] = {"include_usage": True}
        self._body = orjson.dumps(body)
        self._url = config.target.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.concurrency),
            headers=headers,
            # The harness's own deadline (asyncio.timeout) bounds each request.
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def stream(self, trace: _Trace) -> str | None:
        try:
            async with self._session.post(self._url, data=self._body) as response:
                if response.status != 200:
                    await response.read()  # drained, the connection is reused
                    return f"http_{response.status}"
                return await _read_sse(response.content, trace)
        except StreamError as error:
            return error.kind
        except aiohttp.ClientPayloadError:
            return "truncated"
        except aiohttp.ServerDisconnectedError:
            return "disconnect"
        except aiohttp.ClientConnectorError:
            return "connect"
        except aiohttp.ClientError:
            return "client_error"

    async def aclose(self) -> None:
        await self._session.close()


async def _read_sse(content: aiohttp.StreamReader, trace: _Trace) -> str | None:
    parser = SseParser()
    clock = time.perf_counter_ns
    async for data in content.iter_any():
        now = clock()
        for chunk in parser.feed(data):
            tokens = chunk_tokens(chunk)
            if tokens is not None:
                trace.content(now, tokens)
            elif (usage := _usage_tokens(chunk)) is not None:
                trace.usage_tokens = usage
    return None if parser.done else "truncated"


# --- the gRPC client ------------------------------------------------------------------------


class _GrpcClient:
    """InferenceService.StreamChatCompletion over one plain insecure channel."""

    def __init__(self, config: LoadConfig) -> None:
        self._channel = grpc.aio.insecure_channel(config.target)
        self._stub = inference_service_pb2_grpc.InferenceServiceStub(self._channel)
        self._request = inference_service_pb2.StreamChatCompletionRequest(
            parent=f"projects/{config.project}",
            model=config.model,
            messages=[
                common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=config.prompt)
            ],
            max_tokens=config.max_tokens,
        )
        self._metadata = (("x-api-key", config.api_key),) if config.api_key else ()
        self._timeout_s = config.request_timeout_s

    async def stream(self, trace: _Trace) -> str | None:
        call = self._stub.StreamChatCompletion(
            self._request, metadata=self._metadata, timeout=self._timeout_s
        )
        done: inference_service_pb2.ChatCompletionDone | None = None
        clock = time.perf_counter_ns
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    delta = event.delta
                    if delta.text:
                        trace.content(clock(), delta.token_count)
                    else:
                        trace.tokens += delta.token_count
                elif kind == "done":
                    done = event.done
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "deadline"
            return f"grpc_{code.name.lower()}"
        finally:
            call.cancel()  # a no-op once finished; frees the stream when we were cancelled
        return _done_error(done, trace)

    async def aclose(self) -> None:
        await self._channel.close(None)


def _done_error(done: inference_service_pb2.ChatCompletionDone | None, trace: _Trace) -> str | None:
    if done is None:
        return "truncated"
    if done.HasField("usage"):
        trace.usage_tokens = done.usage.completion_tokens
    error_finish = inference_service_pb2.CHAT_COMPLETION_FINISH_REASON_ERROR
    if done.finish_reason == error_finish or done.HasField("error"):
        return "finish_error"
    return None


def _make_client(config: LoadConfig) -> _Client:
    if config.target_kind is TargetKind.GRPC:
        return _GrpcClient(config)
    return _OpenAIClient(config)


# --- running --------------------------------------------------------------------------------

PhaseName = Literal["warmup", "measure"]


@dataclass(frozen=True, slots=True)
class Progress:
    """A phase's state, handed to the progress callback about once a second."""

    phase: PhaseName
    elapsed_s: float
    duration_s: float
    requests: int
    errors: int
    in_flight: int
    tokens: int


ProgressCallback = Callable[[Progress], None]


class _Phase:
    """A bounded window: requests may start until `duration_s` passes or `max_requests` start."""

    def __init__(self, name: PhaseName, duration_s: float, max_requests: int) -> None:
        self.name: PhaseName = name
        self.duration_s = duration_s
        self.start_ns = time.perf_counter_ns()
        self.end_ns = self.start_ns  # when the last request finished
        self._deadline_ns = self.start_ns + int(duration_s * 1e9)
        self._remaining = max_requests
        self.recorder = _Recorder()

    def take(self, now_ns: int) -> bool:
        """Claim the next request, or False once the window is closed."""
        if now_ns >= self._deadline_ns or self._remaining <= 0:
            return False
        self._remaining -= 1
        return True

    def progress(self) -> Progress:
        recorder = self.recorder
        return Progress(
            phase=self.name,
            elapsed_s=(time.perf_counter_ns() - self.start_ns) / 1e9,
            duration_s=self.duration_s,
            requests=recorder.requests,
            errors=recorder.requests - recorder.succeeded,
            in_flight=recorder.in_flight,
            tokens=recorder.tokens,
        )


async def _request(client: _Client, trace: _Trace, timeout_s: float) -> str | None:
    """One request under its deadline; never raises (except cancellation)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await client.stream(trace)
    except TimeoutError:
        return "deadline"
    except Exception as error:  # one odd failure must not end the run; it is counted instead
        return f"unexpected_{type(error).__name__}"


async def _worker(client: _Client, phase: _Phase, timeout_s: float) -> None:
    clock = time.perf_counter_ns
    recorder = phase.recorder
    while phase.take(clock()):
        trace = _Trace(clock())
        recorder.in_flight += 1
        error = await _request(client, trace, timeout_s)
        recorder.in_flight -= 1
        end_ns = clock()
        recorder.add(trace, error, end_ns)
        phase.end_ns = max(phase.end_ns, end_ns)


async def _tick(phase: _Phase, progress: ProgressCallback) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress(phase.progress())


async def _run_phase(
    client: _Client,
    config: LoadConfig,
    name: PhaseName,
    duration_s: float,
    progress: ProgressCallback | None,
) -> _Phase:
    phase = _Phase(name, duration_s, config.max_requests)
    ticker = asyncio.create_task(_tick(phase, progress)) if progress is not None else None
    try:
        # Workers stop claiming at the window's end; in-flight requests end by their deadline.
        async with (
            asyncio.timeout(duration_s + config.request_timeout_s + _PHASE_GRACE_S),
            asyncio.TaskGroup() as group,
        ):
            for _ in range(config.concurrency):
                group.create_task(_worker(client, phase, config.request_timeout_s))
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
    if progress is not None:
        progress(phase.progress())
    return phase


async def run_load(config: LoadConfig, progress: ProgressCallback | None = None) -> LoadReport:
    """Warm up for `config.warmup_s` (discarded), then measure one bounded window."""
    client = _make_client(config)
    try:
        warmup_requests = 0
        if config.warmup_s > 0:
            warmup = await _run_phase(client, config, "warmup", config.warmup_s, progress)
            warmup_requests = warmup.recorder.requests
        measured = await _run_phase(client, config, "measure", config.duration_s, progress)
    finally:
        await client.aclose()
    return _report(config, measured, warmup_requests)


def _report(config: LoadConfig, phase: _Phase, warmup_requests: int) -> LoadReport:
    recorder = phase.recorder
    return LoadReport(
        config=config,
        requests=recorder.requests,
        succeeded=recorder.succeeded,
        errors=dict(recorder.errors),
        elapsed_s=(phase.end_ns - phase.start_ns) / 1e9,
        tokens=recorder.tokens,
        ttft=Percentiles.of(recorder.ttft),
        itl=Percentiles.of(recorder.itl),
        latency=Percentiles.of(recorder.latency),
        usage_tokens=recorder.usage_tokens if recorder.usage_reported else None,
        warmup_requests=warmup_requests,
    )


# --- the verdict ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SloTarget:
    """Declared goals; None sets none. `error_rate` is the largest acceptable failed share."""

    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    error_rate: float | None = None
    min_rps: float | None = None


@dataclass(frozen=True, slots=True)
class SloCheck:
    """One goal against its measurement. NaN (nothing measured) never passes."""

    name: str
    measured: float
    goal: float
    unit: str
    at_most: bool
    """True: passes when measured <= goal; False: when measured >= goal."""

    @property
    def passed(self) -> bool:
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": _json_float(self.measured),
            "goal": self.goal,
            "unit": self.unit,
            "comparison": "<=" if self.at_most else ">=",
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    checks: tuple[SloCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [check.to_json() for check in self.checks]}


def slo_verdict(report: LoadReport, target: SloTarget) -> Verdict:
    """Every declared goal checked, after an implicit one: a run in which no request succeeded
    measured no latency at all, so it fails whatever the declared goals."""
    checks = [SloCheck("succeeded", float(report.succeeded), 1.0, "", at_most=False)]
    if target.ttft_p99_ms is not None:
        checks.append(SloCheck("ttft p99", report.ttft.p99_ms, target.ttft_p99_ms, "ms", True))
    if target.itl_p99_ms is not None:
        checks.append(SloCheck("itl p99", report.itl.p99_ms, target.itl_p99_ms, "ms", True))
    if target.error_rate is not None:
        checks.append(SloCheck("error rate", report.error_rate, target.error_rate, "", True))
    if target.min_rps is not None:
        checks.append(SloCheck("rps", report.rps, target.min_rps, "req/s", at_most=False))
    return Verdict(tuple(checks))


# --- rendering ------------------------------------------------------------------------------


def _num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _latency_rows(report: LoadReport) -> list[str]:
    header = f"{'(ms)':<10}{'count':>9}" + "".join(
        f"{name:>10}" for name in ("p50", "p90", "p99", "p99.9", "max", "mean")
    )
    rows = [header]
    for name, stats in (("ttft", report.ttft), ("itl", report.itl), ("latency", report.latency)):
        values = (stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.p999_ms, stats.max_ms)
        cells = "".join(f"{_num(value):>10}" for value in (*values, stats.mean_ms))
        rows.append(f"{name:<10}{stats.count:>9,}{cells}")
    return rows


def _check_row(check: SloCheck) -> str:
    unit = f" {check.unit}" if check.unit else ""
    digits = {"succeeded": 0, "error rate": 4}.get(check.name, 2)
    measured = "no data" if math.isnan(check.measured) else f"{check.measured:,.{digits}f}{unit}"
    goal = f"{'<=' if check.at_most else '>='} {check.goal:,.6g}{unit}"
    status = "pass" if check.passed else "FAIL"
    return f"  {check.name:<12}{measured:>18}   goal {goal:<20}{status}"


def render(report: LoadReport, verdict: Verdict) -> str:
    """The report as a terminal table, then the verdict with each goal against its measure."""
    config = report.config
    errors = ", ".join(f"{kind}={n}" for kind, n in sorted(report.errors.items())) or "none"
    usage = "" if report.usage_tokens is None else f" (server usage: {report.usage_tokens:,})"
    lines = [
        f"target    {config.target_kind.value} {config.target}  model {config.model}",
        f"load      concurrency {config.concurrency}, max_tokens {config.max_tokens}, "
        f"window {report.elapsed_s:.2f} s (after {report.warmup_requests} warm-up requests)",
        f"requests  {report.requests:,}  ok {report.succeeded:,}  failed {report.failed:,} "
        f"({_num(report.error_rate * 100)} %)  rps {_num(report.rps)}",
        f"tokens    {report.tokens:,}{usage}  tokens/s {_num(report.tokens_per_s, 1)}",
        f"errors    {errors}",
        "",
        *_latency_rows(report),
        "",
        f"SLO verdict: {'PASS' if verdict.passed else 'FAIL'}",
        *(_check_row(check) for check in verdict.checks),
    ]
    return "\n".join(lines)
