"""Per request: the HTTP metrics, bytes served from local repositories, manifest pulls, the access log line.

`access` is the outermost middleware, so it sees every answer: handlers', the error middleware's OCI
bodies and aiohttp's own 404/405. It finishes sending the response itself (aiohttp's prepare() and
write_eof() do nothing when called again, so the server's own call afterwards is a no-op); only then
are the duration and the bytes known, because a response is mostly its body. A response whose connection
closed before it went out whole (the client left, or pull-through cut it) is logged `aborted` with the
body bytes that did go out.

Labels never carry raw paths: the route is the endpoint the dispatcher matched ("manifest", "blob", ...),
the ops routes name themselves, anything else is "other".
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from pullcache import metrics
from pullcache.api.appkeys import CACHE_RESULT, PULL_COUNTS, ROUTE, SERVED_FROM
from pullcache.api.targets import TARGET
from pullcache.logs import emit
from pullcache.metric_children import child

ROUTE_OTHER = "other"
CLIENT_CLOSED = 499  # nginx's code for "the client went away before an answer went out"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes arrive every few seconds; when they succeed their lines are debug, not info.
_QUIET_ROUTES = frozenset({"healthz", "readyz", "metrics"})

access_log = logging.getLogger("pullcache.access")
# The access line's fields (its `extra=`), which the JSON format shows.
_ACCESS_FIELDS = ("method", "path", "route", "status", "bytes", "aborted", "duration_ms", "cache", "upstream",
                  "remote", "user_agent")


class BodyMeter:
    """Counts body bytes as aiohttp's writer accepts them (before chunked framing; headers excluded)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, size: int, _output_size: int) -> None:
        self.bytes += size


def body_bytes_sent(request: web.BaseRequest, response: web.StreamResponse, metered: int, completed: bool) -> int:
    """Body bytes the client was sent.

    A response that completed sent its Content-Length: sendfile() hands the file to the kernel past
    aiohttp's writer, so the meter alone would miss it. A response cut short sent what the writer
    accepted (a sendfile cut short cannot say how far it got and counts nothing).
    """
    if request.method == "HEAD" or response.status < 200 or response.status in (204, 304):
        return 0  # answers that never carry a body, whatever their Content-Length says
    length = response.content_length if completed else None  # read once: an isinstance against an ABC each time
    return metered if length is None else length


def _status(response: web.StreamResponse | None, error: BaseException | None) -> int:
    """The status the client saw (or would have seen, had it stayed)."""
    if response is not None and (response.prepared or error is None):
        return response.status  # read after sending: a FileResponse settles 206/304/416 while preparing
    if error is None or isinstance(error, (ConnectionError, asyncio.CancelledError)):
        return CLIENT_CLOSED
    return 500  # escaped every handler and middleware: aiohttp's server answers 500



def _cut_short(request: web.Request, response: web.StreamResponse) -> bool:
    """The connection closed before the response went out whole: the client went away, or a handler cut
    it (pull-through does when the upstream fails after the headers promised a body, the only way to tell
    the client the body is not whole).

    write_eof() cannot tell us: with a Content-Length, ending the body writes nothing, so it "succeeds"
    on a dead connection. aiohttp sets body_length when the response's EOF was sent, so a response
    the handler finished itself counts as whole even if the client hung up right after.
    """
    if response.prepared and response.body_length:
        return False
    transport = request.transport
    return transport is None or transport.is_closing()


async def _finish(request: web.Request, response: web.StreamResponse) -> bool:
    """Send what the handler has not sent yet; False if the response did not go out whole."""
    if _cut_short(request, response):
        return False
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return False  # aiohttp's server meets the same closed connection when it finishes, and lets it go
    return True


def _record(request: web.Request, response: web.StreamResponse | None, error: BaseException | None,
            completed: bool, metered: int, seconds: float) -> None:
    status = _status(response, error)
    sent = metered if response is None else body_bytes_sent(request, response, metered, completed)
    aborted = response is not None and not completed  # headers (may have) said 200; the body stopped short
    route = request.get(ROUTE, ROUTE_OTHER)
    method = request.method if request.method in _METHODS else "other"
    child(metrics.http_requests, method, route, str(status)).inc()
    child(metrics.http_request_duration, route).observe(seconds)

    answered = 200 <= status < 300
    # Handlers of local repositories mark their content; proxied bodies are counted where they are streamed.
    if answered and request.get(SERVED_FROM) == "local" and sent:
        child(metrics.bytes_served, "local").inc(sent)
    target = request.get(TARGET)  # as the handler resolved it: a push since then may resolve the name otherwise
    if answered and target is not None and route == "manifest" and request.method == "GET":
        request.app[PULL_COUNTS].add(target.store_name)

    level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
    if access_log.isEnabledFor(level):  # debug lines are off by default: nothing to build for them
        upstream = target.upstream.name if target is not None and target.upstream is not None else None
        _log_line(request, level, route, status, sent, aborted, seconds, upstream)


def _log_line(request: web.Request, level: int, route: str, status: int, sent: int, aborted: bool,
              seconds: float, upstream: str | None) -> None:
    cache = request.get(CACHE_RESULT)
    user_agent = request.headers.get("User-Agent", "")
    method, path, remote = request.method, request.raw_path, request.remote
    message = (f"{method} {path} {status} {sent}B{' aborted' if aborted else ''} {seconds * 1000:.1f}ms "
               f"cache={cache or '-'} upstream={upstream or '-'} remote={remote} ua={json.dumps(user_agent)}")
    emit(access_log, level, message, _ACCESS_FIELDS, (
        method, path, route, status, sent, aborted, round(seconds * 1000, 3), cache, upstream, remote, user_agent))


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer, send it all, then count it and log one line."""
    started = time.perf_counter()
    meter = BodyMeter()
    request.writer.on_body_write = meter
    response: web.StreamResponse | None = None
    error: BaseException | None = None
    completed = False
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc  # aiohttp's own 404/405 and redirects: sent here, re-raised for the server below
        completed = await _finish(request, response)
    except BaseException as exc:
        error = exc
        raise
    finally:
        _record(request, response, error, completed, meter.bytes, time.perf_counter() - started)
    if isinstance(response, web.HTTPException):
        raise response
    return response
