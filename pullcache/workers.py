"""`workers: N` (N > 1): N pullcache processes on one host, one listening port, one store.

`pullcache serve` becomes a supervisor: it binds every socket, forks the workers, says the start-up line
once they all serve, restarts a worker that dies, and on SIGTERM or SIGINT stops them all, each with its
normal graceful shutdown. It serves no request itself. `workers: 1` never comes here: one process, as ever.

Each worker gets a listening socket of its own on the shared port, bound with SO_REUSEPORT, rather than
all of them accepting from one inherited socket:
- asyncio accepts a burst of connections per wake-up, and on one shared socket every worker is woken for
  each connection: whichever wakes first takes the burst, so load spreads unevenly. With SO_REUSEPORT the
  kernel spreads new connections over the workers' sockets by their addresses.
- The supervisor binds all the sockets and keeps them open across a worker's restart, so connections the
  kernel queued on a dead worker's socket wait there for its replacement instead of being reset.
- A port somebody else holds is still the one-line error of startup.bind: the port is first bound without
  SO_REUSEPORT (which also picks the port for `listen: host:0`), so a second pullcache cannot join it.

Each worker also listens on an internal address of its own, for peers that must reach that one process
(a fill another process streams from its lease holder): a loopback port the supervisor binds per worker,
kept across restarts. The worker's config carries it as `cluster.advertise`, the address peers are told.
With `cluster.advertise` set (replicas on several hosts), the port is bound on the listen host instead and
the advertised URL is cluster.advertise with that port.

Fork, not spawn: a worker inherits the config, the bound sockets and the TLS context as they are. The
supervisor runs no event loop and no thread but the log writer's (which every fork waits for: logs.py), so
forking it is safe; it waits on a selector woken by signals (signal.set_wakeup_fd) and by each worker's
ready pipe.

Without `cluster.secret_env` the supervisor makes a random cluster secret for its workers (shared_secret()).

Metrics are scraped once for the host: prometheus-client's multiprocess mode, in a private directory the
supervisor makes before anything imports prometheus_client and removes at exit (metrics_directory()).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pullcache.config import Config, ConfigError
from pullcache.logs import flush_logs
from pullcache.startup import address, bind, say_started

log = logging.getLogger("pullcache.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKERS_SECRET_ENV = "PC_WORKERS_CLUSTER_SECRET"  # not PULLCACHE_*: those are config overrides
MAX_START_FAILURES = 3  # workers dying before they serve, in a row: the supervisor gives up
RESTART_BACKOFF = 1.0  # seconds before starting again after a failed start, times the failures in a row
STOP_TIMEOUT = 75.0  # seconds a stopping worker gets (aiohttp's graceful shutdown waits up to 60) before SIGKILL
CONFIG_ERROR = 2  # the exit code of a worker whose config cannot be used, as `pullcache` itself exits
READY = b"r"
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A private PROMETHEUS_MULTIPROC_DIR for this host's workers, set in the environment (before any import
    of prometheus_client: its value class is chosen then) and removed with its files at exit."""
    path = tempfile.mkdtemp(prefix="pullcache-metrics-")
    earlier = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if earlier is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = earlier


@dataclass
class Slot:
    """One worker's place: its sockets outlive the processes that serve on them."""

    number: int
    listening: list[socket.socket]  # on the shared port, SO_REUSEPORT
    peer: list[socket.socket]  # its internal address
    advertise: str  # the URL of `peer`
    pid: int | None = None
    ready_fd: int | None = None  # read end of the pipe the worker says it serves on
    serving: bool = False
    start_at: float | None = None  # monotonic time to (re)start it; None: not due


def _peer_address(config: Config, scheme: str) -> tuple[list[socket.socket], str]:
    """A worker's internal sockets and the URL peers reach them at (see the module docstring)."""
    if config.cluster.advertise is None:
        sockets = bind("127.0.0.1", 0)
        return sockets, f"{scheme}://127.0.0.1:{sockets[0].getsockname()[1]}"
    sockets = bind(config.host, 0)
    parts = urlsplit(config.cluster.advertise)
    netloc = address(parts.hostname or config.host, int(sockets[0].getsockname()[1]))
    return sockets, urlunsplit((parts.scheme, netloc, "", "", ""))


def _slots(config: Config, scheme: str) -> list[Slot]:
    """Bind everything: the shared port once plainly (a taken port is startup.bind's one line), then one
    SO_REUSEPORT set per worker on the port that bind chose, and each worker's internal address."""
    probe = bind(config.host, config.port)
    port = int(probe[0].getsockname()[1])
    for sock in probe:
        sock.close()
    slots = []
    for number in range(1, config.workers + 1):
        peer, advertise = _peer_address(config, scheme)
        slots.append(Slot(number, bind(config.host, port, reuse_port=True), peer, advertise))
    return slots


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when the supervisor dies (even by SIGKILL): no orphans serve on."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


Check = Callable[[Config], None]  # raises ConfigError: what `serve` checks of the storage before it serves


class Supervisor:
    def __init__(self, config: Config, ssl_context: ssl.SSLContext | None, check_storage: Check) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.check_storage = check_storage
        self.slots = _slots(config, "https" if ssl_context else "http")
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.announced = False
        self.failures_in_a_row = 0
        self._wake_r, self._wake_w = os.pipe()

    # ------------------------------------------------------------------ the supervisor's loop
    def run(self) -> int:
        """Start the first worker, the others once it serves (a config error then shows once, not N
        times), and watch them until a signal or failing starts end it all; the exit code."""
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)  # wakes the selector; the signal is read from the pipe
        self.slots[0].start_at = time.monotonic()
        try:
            while not (self.stopping and not self._running()):
                self._start_due()
                for key, _ in self.selector.select(self._timeout()):
                    if key.fd == self._wake_r:
                        self._on_signals()
                    else:
                        self._on_ready(key.data)
                self._reap()
                if self.stopping and time.monotonic() > self.stop_deadline:
                    self._signal_all(signal.SIGKILL)
        finally:
            signal.set_wakeup_fd(-1)
            for slot in self.slots:
                for sock in slot.listening + slot.peer:
                    sock.close()
        return self.exit_code

    def _running(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.pid is not None]

    def _timeout(self) -> float | None:
        due = [slot.start_at for slot in self.slots if slot.start_at is not None]
        if self.stopping:
            due.append(self.stop_deadline)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if not self.stopping and slot.start_at is not None and slot.start_at <= now:
                slot.start_at = None
                self._fork(slot)

    def _on_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(self._wake_r, 64):
                if signum == signal.SIGHUP and not self.stopping:  # logrotate: the workers reopen the audit log
                    self._signal_all(signal.SIGHUP)
                    log.info("SIGHUP: passed on to %d workers", len(self._running()))
                if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self._running()))
                    self.stop(0)

    def stop(self, exit_code: int) -> None:
        """Stop every worker gracefully (SIGTERM), and exit with exit_code once they are gone."""
        self.stopping, self.exit_code = True, exit_code
        self.stop_deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self.slots:
            slot.start_at = None
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: signal.Signals) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _on_ready(self, slot: Slot) -> None:
        assert slot.ready_fd is not None
        said = os.read(slot.ready_fd, 1)
        self._close_ready(slot)
        if said != READY:
            return  # it ended before serving: _reap says how
        slot.serving, self.failures_in_a_row = True, 0
        if not any(other.pid or other.start_at for other in self.slots[1:]) and not self.announced:
            for other in self.slots[1:]:
                other.start_at = time.monotonic()
        if not self.announced and all(other.serving for other in self.slots):
            self.announced = True
            say_started(self.config, self.slots[0].listening)

    def _close_ready(self, slot: Slot) -> None:
        if slot.ready_fd is not None:
            self.selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((slot for slot in self.slots if slot.pid == pid), None)
            if slot is not None:
                self._ended(slot, pid, status)

    def _ended(self, slot: Slot, pid: int, status: int) -> None:
        from prometheus_client import multiprocess  # only now: the supervisor sets the directory first

        multiprocess.mark_process_dead(pid)  # its live gauges no longer count
        if slot.ready_fd is not None and os.read(slot.ready_fd, 1) == READY:  # said so just before it ended
            slot.serving = True
        self._close_ready(slot)
        served, slot.pid, slot.serving = slot.serving, None, False
        what = _describe(status)
        if self.stopping:
            if served and os.WIFSIGNALED(status):  # not the graceful end it was asked for
                log.warning("worker %d (pid %d) ended while stopping (%s)", slot.number, pid, what)
            return
        if served:
            log.error("worker %d (pid %d) died (%s); starting another", slot.number, pid, what)
            slot.start_at = time.monotonic()
            return
        self.failures_in_a_row += 1
        code = os.waitstatus_to_exitcode(status)
        if code == CONFIG_ERROR and not self.announced:
            self.stop(CONFIG_ERROR)  # it printed the config error: one line, as without workers
        elif self.failures_in_a_row >= MAX_START_FAILURES:
            print(f"pullcache: workers keep failing at start-up ({self.failures_in_a_row} in a row, the last "
                  f"{what}; see the log above): stopping", file=sys.stderr)
            self.stop(1)
        else:
            delay = RESTART_BACKOFF * self.failures_in_a_row
            log.error("worker %d (pid %d) failed at start-up (%s); starting it again in %gs", slot.number, pid,
                      what, delay)
            slot.start_at = time.monotonic() + delay

    # ------------------------------------------------------------------ a worker
    def _fork(self, slot: Slot) -> None:
        ready_r, ready_w = os.pipe()
        supervisor = os.getpid()
        flush_logs()  # what the supervisor said (a worker died...) is written before the new worker says anything
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the supervisor's frames
            code = 1
            try:
                self._become_worker(slot, supervisor, ready_r)
                code = run_worker(self.config, slot, self.ssl_context, ready_w, self.check_storage)
            except BaseException:  # said in the log; the exit code tells the supervisor
                log.exception("worker %d (pid %d) failed", slot.number, os.getpid())
            finally:
                try:
                    _flush_metrics()
                    flush_logs()  # the log writer's thread: os._exit skips atexit, which would write what is queued
                    logging.shutdown()
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)  # whatever went wrong above: never back into the supervisor's frames
        os.close(ready_w)
        slot.pid, slot.ready_fd, slot.serving = pid, ready_r, False
        self.selector.register(ready_r, selectors.EVENT_READ, slot)

    def _become_worker(self, slot: Slot, supervisor: int, ready_r: int) -> None:
        """Drop what belongs to the supervisor: its signal handling, its pipes, the other workers' sockets."""
        signal.set_wakeup_fd(-1)  # first: a signal to this process must not wake the supervisor
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor passes it on; the audit log may take it
        _die_with_parent()
        if os.getppid() != supervisor:  # it died before the request above took effect
            os._exit(0)
        self.selector.close()
        for fd in (self._wake_r, self._wake_w, ready_r):
            os.close(fd)
        for other in self.slots:
            if other.ready_fd is not None:
                os.close(other.ready_fd)
            if other is not slot:
                for sock in other.listening + other.peer:
                    sock.close()


def _flush_metrics() -> None:
    """Write a stopping worker's last counts (os._exit skips atexit, which would); a failure is said, and the
    worker still exits."""
    from pullcache import metric_files  # here, not above: prometheus_client reads its directory at import

    try:
        metric_files.flush()
    except Exception:
        log.exception("worker (pid %d): writing its last metric values failed", os.getpid())


def run_worker(config: Config, slot: Slot, ssl_context: ssl.SSLContext | None, ready_fd: int,
               check_storage: Check) -> int:
    """Check the storage, then serve the app on the slot's sockets until SIGTERM or SIGINT; the exit code.

    The storage is checked here, not in the supervisor: the S3 check starts the object store client's
    runtime threads, and a process forked from one that runs them hangs in that client."""
    import asyncio

    from aiohttp import web

    from pullcache.app import build_app
    from pullcache.worker_signals import StopSignals

    worker_config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, advertise=slot.advertise))
    loop = asyncio.new_event_loop()
    stop_signals = StopSignals(loop)  # first: a stop that comes while it starts is kept, not lost or fatal
    try:
        try:
            check_storage(worker_config)
            app = build_app(worker_config)
        except ConfigError as exc:
            print(f"pullcache: config error: {exc}", file=sys.stderr)
            return CONFIG_ERROR

        async def serving(_app: web.Application) -> None:
            """Its resources are open: a stop signal now stops it; tell the supervisor."""
            stop_signals.serving()
            log.info("worker %d (pid %d) started; peers reach it at %s", slot.number, os.getpid(), slot.advertise)
            os.write(ready_fd, READY)
            os.close(ready_fd)

        app.on_startup.append(serving)
        web.run_app(app, sock=slot.listening + slot.peer, ssl_context=ssl_context, access_log=None, print=None,
                    handle_signals=False, loop=loop)
    finally:
        stop_signals.ignore()
        if not loop.is_closed():
            loop.close()
    log.info("worker %d (pid %d) stopped", slot.number, os.getpid())
    return 0


def shared_secret(config: Config) -> Config:
    """The config the workers run with: without `cluster.secret_env`, one a random secret this supervisor
    makes, so that every worker signs and accepts the same /auth/token tokens (a client's token request
    and its pulls may reach different workers), until the supervisor stops, as one process's key lasts."""
    if config.cluster.secret_env is not None:
        return config
    os.environ[WORKERS_SECRET_ENV] = secrets.token_hex(32)
    return dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, secret_env=WORKERS_SECRET_ENV))


def serve_workers(config: Config, ssl_context: ssl.SSLContext | None, check_storage: Check) -> int:
    """Run config.workers workers until SIGTERM or SIGINT (called inside metrics_directory()); the exit code.
    Each worker runs check_storage first (run_worker says why not here)."""
    from prometheus_client import multiprocess

    import pullcache.app  # noqa: F401 - imported once here, not again in every worker forked (no threads)

    # The import made this process's values of the unlabelled metrics, zeros in files of its pid. The
    # supervisor serves nothing: its live gauges must not count (it would hold coordination_up, the lowest
    # over the live processes, at 0).
    multiprocess.mark_process_dead(os.getpid())
    return Supervisor(shared_secret(config), ssl_context, check_storage).run()
