"""Events (`notifications.endpoints`): Distribution's envelope to an HTTP receiver the test starts on loopback;
a dead or hanging receiver never slows a push, and the event is retried until the receiver is back."""
from __future__ import annotations

import asyncio
import base64
import http.server
import json
import queue
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pullcache import metrics
from pullcache.app import build_app
from pullcache.config import ConfigError, build_config
from tests.registry_api import SignedIn, push_image
from tests.support.htpasswd import write_htpasswd
from tests.support.procs import free_port

pytest_plugins = ["tests.registry_api"]

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
PASSWORDS = {"alice": "alice pass"}
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:alice pass").decode()}


class Receiver:
    """An HTTP endpoint on loopback that records every envelope; `hang` makes it accept and never answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.envelopes: list[dict[str, Any]] = []
        self.requests: list[web.Request] = []
        self.hang = False
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _handle(self, request: web.Request) -> web.Response:
        if self.hang:
            await asyncio.sleep(3600)
        self.requests.append(request)
        self.envelopes.append(json.loads(await request.read()))
        self.arrived.set()
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async def enough() -> None:
            while sum(len(e["events"]) for e in self.envelopes) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)
        return [event for envelope in self.envelopes for event in envelope["events"]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver(free_port())
    yield server
    await server.stop()


def notifying_config(tmp_path: Path, receiver: Receiver, **endpoint: Any) -> Any:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return build_config({"storage": {"path": str(tmp_path / "data")}, "auth": {"htpasswd": str(htpasswd)},
                         "notifications": {"endpoints": [{"name": "ci", "url": receiver.url,
                                                          "headers": {"Authorization": "Bearer hook-secret"},
                                                          "timeout": "1s", "backoff": "50ms", **endpoint}]}})



def sent(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("pullcache_notifications_total",
                                             {"endpoint": "ci", "result": result}) or 0.0


async def test_a_push_sends_distributions_envelope(aiohttp_client: Any, tmp_path: Path, receiver: Receiver) -> None:
    await receiver.start()
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver)))
    image = await push_image(SignedIn(client, ALICE), "team/app", "v1")  # type: ignore[arg-type]
    [event] = await receiver.events(1)
    request = receiver.requests[0]
    assert request.headers["Content-Type"] == ENVELOPE
    assert request.headers["Authorization"] == "Bearer hook-secret"
    assert event["action"] == "push"
    assert event["id"] and event["timestamp"]
    target = event["target"]
    assert target["repository"] == "team/app" and target["tag"] == "v1" and target["digest"] == image.digest
    assert target["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert target["size"] == target["length"] == len(image.manifest)
    assert target["url"].endswith(f"/v2/team/app/manifests/{image.digest}")
    assert event["actor"] == {"name": "alice"}
    assert event["request"]["method"] == "PUT" and event["request"]["addr"].startswith("127.0.0.1")
    assert event["source"]["addr"]


async def test_a_delete_sends_an_event(aiohttp_client: Any, tmp_path: Path, receiver: Receiver) -> None:
    await receiver.start()
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver, events=["delete"])))
    image = await push_image(SignedIn(client, ALICE), "team/app", "v1")  # type: ignore[arg-type]
    assert (await client.delete(f"/v2/team/app/manifests/{image.digest}", headers=ALICE)).status == 202
    [event] = await receiver.events(1)  # the push was not asked for
    assert event["action"] == "delete"
    assert event["target"]["repository"] == "team/app" and event["target"]["digest"] == image.digest


async def test_pulls_are_sent_when_asked(aiohttp_client: Any, tmp_path: Path, receiver: Receiver) -> None:
    await receiver.start()
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver, events=["pull"])))
    image = await push_image(SignedIn(client, ALICE), "team/app", "v1")  # type: ignore[arg-type]
    assert (await client.get("/v2/team/app/manifests/v1")).status == 200
    [event] = await receiver.events(1)
    assert event["action"] == "pull" and event["target"]["digest"] == image.digest
    assert event["target"]["tag"] == "v1" and event["actor"] == {}


async def test_a_pull_event_names_the_user_who_logged_in(aiohttp_client: Any, tmp_path: Path,
                                                        receiver: Receiver) -> None:
    await receiver.start()
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver, events=["pull"])))
    await push_image(SignedIn(client, ALICE), "team/app", "v1")  # type: ignore[arg-type]
    assert (await client.get("/v2/team/app/manifests/v1", headers=ALICE)).status == 200
    [event] = await receiver.events(1)
    assert event["action"] == "pull" and event["actor"] == {"name": "alice"}


async def test_a_hanging_receiver_never_slows_a_push(aiohttp_client: Any, tmp_path: Path,
                                                     receiver: Receiver) -> None:
    receiver.hang = True
    await receiver.start()
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver, timeout="5s")))
    started = time.monotonic()
    await push_image(SignedIn(client, ALICE), "team/app", "v1")  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0  # well under the endpoint's 5 s timeout


async def test_a_dead_receiver_gets_the_event_when_it_comes_back(aiohttp_client: Any, tmp_path: Path,
                                                                 receiver: Receiver) -> None:
    failed_before = sent("failed")
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver)))
    image = await push_image(SignedIn(client, ALICE), "team/app", "v1")  # type: ignore[arg-type]
    async def failed_twice() -> None:
        while sent("failed") < failed_before + 2:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(failed_twice(), 10)  # retried with backoff while nobody listens
    sent_before = sent("sent")
    await receiver.start()
    [event] = await receiver.events(1)
    assert event["target"]["digest"] == image.digest
    assert sent("sent") == sent_before + 1


async def test_a_full_queue_drops_and_counts(aiohttp_client: Any, tmp_path: Path, receiver: Receiver) -> None:
    dropped_before = sent("dropped")
    client = await aiohttp_client(build_app(notifying_config(tmp_path, receiver, queue=1)))
    for seed in "abcd":
        await push_image(SignedIn(client, ALICE), "team/app", seed, seed=seed)  # type: ignore[arg-type]
    assert sent("dropped") >= dropped_before + 2  # one in flight, one queued, the rest dropped


@pytest.mark.parametrize("endpoint, key", [
    ({"url": "http://x/events"}, "notifications.endpoints[0]"),
    ({"name": "ci", "url": "ftp://x"}, "notifications.endpoints[0].url"),
    ({"name": "ci", "url": "http://x", "events": ["push", "tag"]}, "notifications.endpoints[0].events"),
    ({"name": "ci", "url": "http://x", "timeout": "soon"}, "notifications.endpoints[0].timeout"),
    ({"name": "ci", "url": "http://x", "headers": {"X-A": 1}}, "notifications.endpoints[0].headers"),
])
def test_bad_endpoints_are_config_errors(endpoint: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config({"notifications": {"endpoints": [endpoint]}})
    assert str(raised.value).startswith(f"{key}: ")


class ThreadedReceiver:
    """A receiver in a thread of its own, for a pullcache running as a process."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()  # (Content-Type, event)
        received = self.events

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                for event in json.loads(body)["events"]:
                    received.put((self.headers["Content-Type"], event))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_a_docker_push_reaches_the_receiver(pullcache_factory: Any, upstream: Any, dockerd_factory: Any,
                                            tmp_path: Path) -> None:
    receiver = ThreadedReceiver()
    try:
        htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
        server = pullcache_factory({"auth": {"htpasswd": str(htpasswd)}, "local": {"anonymous_push": False},
                                    "notifications": {"endpoints": [{"name": "ci", "url": receiver.url}]}})
        daemon = dockerd_factory()
        source = f"{upstream.host}/library/single:v1"
        daemon.docker("pull", source)
        daemon.docker("login", "-u", "alice", "--password-stdin", server.host, input="alice pass\n")
        daemon.docker("tag", source, f"{server.host}/team/app:v1")
        push = daemon.docker("push", f"{server.host}/team/app:v1")
        digest = next(word for word in push.stdout.split() if word.startswith("sha256:"))
        content_type, event = receiver.events.get(timeout=10)
        assert content_type == ENVELOPE
        assert event["action"] == "push"
        assert (event["target"]["repository"], event["target"]["tag"], event["target"]["digest"]) == (
            "team/app", "v1", digest)
        assert event["actor"] == {"name": "alice"}
        assert event["request"]["useragent"].startswith("docker/")
    finally:
        receiver.stop()
