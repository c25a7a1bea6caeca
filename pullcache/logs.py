"""Logging set-up: human-readable text, or one JSON object per line for log shippers (log.format: json).

Structured fields travel as `extra=` on the log call (the access log passes method, path, status, ...).
The text format shows the message, which already says everything; the JSON format adds those fields
as keys so that a log pipeline can filter on them without parsing the message.

Lines are formatted and written by a thread of their own (Writer), in the order they were logged: the
access log writes one per request, and a write to a slow pipe or disk must not stop the event loop, nor
formatting take its time. Under load the writer gathers the lines of BATCH_PAUSE into one write: woken
for every line, it cost more than the line itself (each wake-up takes the GIL from the event loop). A
record whose arguments could change after the call has its message merged when logged (Enqueue). A line
whose only destination is this writer (the access log's, unless a test or an embedder added a handler) can
skip the LogRecord and the logging machinery altogether (emit): a share of a cached pull's CPU. Every
line is written before the process exits (atexit) and before it forks, and a forked child gets a writer of
its own.
"""
from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from queue import SimpleQueue
from typing import TextIO

from pullcache.config import LogConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "pullcache"

# Every attribute a plain LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field
class Line:
    """A log line as emit() queues it: what a LogRecord of it would say that a format shows. The `extra=`
    fields come as keys and values, zipped only by a format that shows them (JSON), on the writer's thread."""

    created: float  # time.time() when logged
    level: int
    logger: str
    message: str  # merged already
    keys: tuple[str, ...]
    values: tuple[object, ...]

    def fields(self) -> dict[str, object]:
        return dict(zip(self.keys, self.values, strict=True))

    def record(self) -> logging.LogRecord:
        """The LogRecord logging would have made (for a formatter that knows no Line)."""
        record = logging.LogRecord(self.logger, self.level, "", 0, self.message, None, None)
        record.created, record.msecs = self.created, _msecs(self.created)
        record.__dict__.update(self.fields())
        return record


def _msecs(created: float) -> float:
    return int((created - int(created)) * 1000) + 0.0  # what LogRecord computes


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra fields, "exc" when there is a traceback} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(record.created, record.levelname, record.name, record.getMessage())
        entry.update((key, value) for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self._dumps(entry)

    def format_line(self, line: Line) -> str:
        entry = self._entry(line.created, logging.getLevelName(line.level), line.logger, line.message)
        entry.update(zip(line.keys, line.values, strict=True))
        return self._dumps(entry)

    @staticmethod
    def _entry(created: float, level: str, logger: str, message: str) -> dict[str, object]:
        return {"ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": level.lower(), "logger": logger, "msg": message}

    @staticmethod
    def _dumps(entry: dict[str, object]) -> str:
        # default=str: an extra that JSON cannot encode still yields a line instead of a lost record.
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the local time of a second formatted once for all its lines (the access log writes
    hundreds a second, and `strftime` was a share of each)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created, record.msecs)

    def _time(self, created: float, msecs: float) -> str:
        second, known = int(created), self._second
        if known[0] != second:
            known = self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return f"{known[1]},{int(msecs):03d}"  # logging's default_msec_format, "%s,%03d"

    def format_line(self, line: Line) -> str:
        """TEXT_FORMAT of a Line, as format() would write its record."""
        return (f"{self._time(line.created, _msecs(line.created))} {logging.getLevelName(line.level)} "
                f"{line.logger}: {line.message}")


def formatter_for(config: LogConfig) -> logging.Formatter:
    return JsonFormatter() if config.format == "json" else TextFormatter()


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is when a line goes out, as logging's own last-resort handler does, not to
    the stream that was sys.stderr when logging was configured: a stream replaced and closed since (a test
    runner's capture) must not turn the writer's next lines into errors."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass  # StreamHandler.__init__ sets it; the property always answers sys.stderr


FLUSH_SECONDS = 5.0   # how long flush_logs() and exiting wait for a stuck stream
BATCH_PAUSE = 0.01    # after a write, lines gather this long before the next (a line is late by at most this)


class Writer:
    """Formats and writes records for `target` (a StreamHandler: its formatter and stream) on a thread of its
    own, in order. A line logged while the thread waits goes out at once; under load the lines logged
    during one BATCH_PAUSE go out in one write, so the thread wakes, and takes the GIL, once per pause
    rather than once per request."""

    def __init__(self, target: logging.StreamHandler[TextIO]) -> None:
        self.target = target
        self._start()

    def _start(self) -> None:
        self._queue: SimpleQueue[logging.LogRecord | Line | threading.Event | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pullcache-log-writer", daemon=True)
        self._thread.start()

    def put_nowait(self, record: logging.LogRecord | Line) -> None:  # QueueHandler's side of a queue, and emit's
        self._queue.put(record)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            records = [item for item in batch if isinstance(item, (logging.LogRecord, Line))]
            if records:
                self._write(records)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()  # a flush: everything before it is written
            if None in batch:
                return
            time.sleep(BATCH_PAUSE)

    def _write(self, records: list[logging.LogRecord | Line]) -> None:
        target, lines = self.target, []
        format_line = getattr(target.formatter, "format_line", None)
        for record in records:
            try:
                if isinstance(record, Line):
                    text = format_line(record) if format_line is not None else target.format(record.record())
                else:
                    text = target.format(record)
                lines.append(text + target.terminator)
            except Exception:  # noqa: BLE001 - logging's rule: a line that cannot be written is reported, not raised
                target.handleError(record.record() if isinstance(record, Line) else record)
        try:
            target.stream.write("".join(lines))
            target.stream.flush()
        except Exception:  # noqa: BLE001 - as above
            last = records[-1]
            target.handleError(last.record() if isinstance(last, Line) else last)

    def flush(self, timeout: float = FLUSH_SECONDS) -> None:
        """Wait until every record put so far is written."""
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def stop(self, timeout: float = FLUSH_SECONDS) -> None:
        """Write what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        self.target.close()

    def restart_in_child(self) -> None:
        """After fork: the parent's thread did not come along, and its queue is the parent's."""
        self._start()


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})  # exact types: a subclass may be anything


class Enqueue(QueueHandler):
    """Puts each record on the Writer's queue. One whose message or arguments could change once the call
    returns (anything but strings and numbers: the access log passes only those) is copied with its message
    merged now, and a traceback is rendered while it is current; the rest is left to the writer."""

    def __init__(self, writer: Writer) -> None:
        super().__init__(writer)  # type: ignore[arg-type]  # a Writer has the put_nowait a queue needs
        self.writer = writer

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        args = record.args
        if record.exc_info is None and type(record.msg) is str and (
                not args or (type(args) is tuple and _IMMUTABLE.issuperset(map(type, args)))):
            return record
        prepared = copy.copy(record)  # other handlers (pytest's) see the record as logged
        prepared.msg, prepared.args = record.getMessage(), None
        if record.exc_info:
            formatter = self.writer.target.formatter or logging.Formatter()
            prepared.exc_text, prepared.exc_info = formatter.formatException(record.exc_info), None
        return prepared


_active: Writer | None = None
_installed: Enqueue | None = None  # configure_logging's handler on the root logger


def _only_to_writer(logger: logging.Logger) -> bool:
    """Whether a record of `logger` would reach nothing but the writer: no handler or filter on its way to the
    root but ours (a test's capture, or an embedder's handler, needs the LogRecord)."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return False
        if node.parent is None:  # the root
            return _installed is not None and node.handlers == [_installed] and not _installed.filters
        if node.handlers or not node.propagate:
            return False
        node = node.parent
    return False


def emit(logger: logging.Logger, level: int, message: str, keys: tuple[str, ...], values: tuple[object, ...]) -> None:
    """Log `message` (merged already) with the fields `keys`=`values` as its `extra=`, for a caller that checked
    isEnabledFor.

    When the writer is the only destination the line goes to it without a LogRecord and the logging
    machinery (handler lookup, locks, %-formatting); it writes the same line either way."""
    writer = _active
    if writer is not None and _only_to_writer(logger):
        writer.put_nowait(Line(time.time(), level, logger.name, message, keys, values))
        return
    record = logging.LogRecord(logger.name, level, "", 0, message, None, None)
    record.__dict__.update(zip(keys, values, strict=True))
    logger.handle(record)


def flush_logs() -> None:
    """Wait until every line logged so far is written (tests read the stream; a child flushes before _exit)."""
    if _active is not None:
        _active.flush()


def _stop_writer() -> None:
    global _active
    if _active is not None:
        _active.stop()
        _active = None


def _after_fork_in_child() -> None:
    if _active is not None:
        _active.restart_in_child()


atexit.register(_stop_writer)  # after logging's own: atexit runs the last registered first
# Lines logged before a fork are written before it: else the parent's writer could write them after the child's.
os.register_at_fork(before=flush_logs, after_in_child=_after_fork_in_child)


def configure_logging(config: LogConfig) -> None:
    """Send every logger's records to stderr in the configured format at the configured level.

    Calling it again replaces the handler it installed before (so no line prints twice; what it queued is
    written first) and leaves handlers others installed alone. Python warnings become log records too:
    printed raw they would break a JSON log stream.
    """
    global _active, _installed
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(earlier)
        earlier.close()
    _stop_writer()
    stream = StderrHandler()
    stream.setFormatter(formatter_for(config))
    _active = Writer(stream)
    handler = _installed = Enqueue(_active)
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # Neither format names a thread or process: records skip looking them up (logging HOWTO, "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.captureWarnings(True)
