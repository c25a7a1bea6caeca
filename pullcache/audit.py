"""The audit log (`log.audit`): one JSON object per line for each event an operator must be able to account for.

Events (`action`, `result`): a manifest push (`push`, `success`), a tag moved to another manifest
(`tag_overwrite`, with the `previous` digest), a delete (`delete`), a refusal by policy (the action
refused, `denied`, with the `reason`), wrong credentials (`login`, `failure`), robot token creation and
revocation (`token_create`, `token_revoke`) and, with `log.audit_pulls`, manifest pulls (`pull`). Every
line has the same keys: time, action, result, principal, remote, repository, reference, digest (null
where they do not apply), then any extra ones. No secret is ever written: a principal is a name.

Lines are written in order by one thread of their own, so the event loop never waits on the disk. The
file is opened in append mode and reopened by `reopen()` (SIGHUP, see `watch_sighup`), so logrotate can
rename it away and signal.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import IO, Any

from pullcache.config import ConfigError, LogConfig

STDOUT = "stdout"

log = logging.getLogger("pullcache.audit")


def event_line(action: str, result: str, *, principal: str, remote: str | None, repository: str | None = None,
               reference: str | None = None, digest: str | None = None, **extra: Any) -> str:
    event = {"time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "action": action, "result": result, "principal": principal, "remote": remote,
             "repository": repository, "reference": reference, "digest": digest, **extra}
    return json.dumps(event, ensure_ascii=False) + "\n"


def append_event(config: LogConfig, action: str, result: str, **fields: Any) -> None:
    """Write one line now, from a command beside the server (`pullcache token`): to an audit file only,
    since a command's stdout is not the server's."""
    if config.audit in (None, STDOUT):
        return
    try:
        with open(config.audit, "a", encoding="utf-8") as file:
            file.write(event_line(action, result, remote=None, **fields))
    except OSError as exc:
        raise ConfigError(f"log.audit: {config.audit!r} cannot be opened for appending ({exc.strerror})") from exc


def check_target(config: LogConfig) -> None:
    """ConfigError unless log.audit can be appended to (check-config; the server opens it at start-up)."""
    if config.audit not in (None, STDOUT):
        AuditLog(config).close_now()


class AuditLog:
    def __init__(self, config: LogConfig) -> None:
        self.target = config.audit
        self.pulls = config.audit_pulls
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullcache-audit")
        self._file: IO[str] | None = None
        if self.target not in (None, STDOUT):
            self._file = self._open()

    @property
    def enabled(self) -> bool:
        return self.target is not None

    def _open(self) -> IO[str]:
        assert self.target is not None
        try:
            return open(self.target, "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"log.audit: {self.target!r} cannot be opened for appending ({exc.strerror})") from exc

    def _write(self, line: str) -> None:
        stream = self._file if self._file is not None else sys.stdout
        try:
            stream.write(line)
            stream.flush()
        except OSError as exc:  # a full disk must not take requests down; the loss is said once per line
            log.error("audit log %s: cannot write an event (%s): %s", self.target, exc.strerror, line.strip())

    def record(self, action: str, result: str, *, principal: str, remote: str | None, **fields: Any) -> None:
        """Queue one line (fields: repository, reference, digest, extras); returns at once."""
        if self.enabled:
            self._thread.submit(self._write, event_line(action, result, principal=principal, remote=remote, **fields))

    def _reopen(self) -> None:
        if self._file is None:
            return
        try:
            reopened = self._open()
        except ConfigError as exc:
            log.error("%s; still writing to the file as it was", exc)
            return
        self._file.close()
        self._file = reopened
        log.info("audit log %s reopened", self.target)

    def reopen(self) -> None:
        """Reopen the file (after logrotate renamed it): events before this call go to the old one."""
        self._thread.submit(self._reopen)

    async def drain(self) -> None:
        """Wait until every line queued so far is written."""
        await asyncio.wrap_future(self._thread.submit(lambda: None))

    def close_now(self) -> None:
        """Close at once, for a log that never recorded anything."""
        self._thread.shutdown()
        if self._file is not None:
            self._file.close()

    async def close(self) -> None:
        if self.enabled:
            await self.drain()
        self.close_now()


def watch_sighup(audit: AuditLog) -> None:
    """Reopen the audit file on SIGHUP, as logrotate's postrotate expects (`kill -HUP <pid>`)."""
    if audit.target not in (None, STDOUT):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, audit.reopen)


def unwatch_sighup(audit: AuditLog) -> None:
    if audit.target not in (None, STDOUT):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
