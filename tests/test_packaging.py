"""pyproject.toml asks for the dependency releases whose APIs the code relies on."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from aiohttp.abc import AbstractStreamWriter

ROOT = Path(__file__).resolve().parents[1]

# aiohttp 3.14.4 (UploadTracker, aio-libs/aiohttp#13579 and #13691) is the first release whose writer calls
# on_body_write(size, output_size); api/observe.py counts the body bytes a client was sent with it. On an
# older release the attribute is set but never called, and every aborted response is logged as 0 bytes.
FIRST_AIOHTTP_WITH_ON_BODY_WRITE = (3, 14, 4)


def declared_floor(package: str) -> tuple[int, ...]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in dependencies if re.match(rf"{package}\b", d)]
    match = re.search(r">=\s*([\d.]+)", spec)
    assert match, f"{spec!r} sets no floor"
    return tuple(int(part) for part in match.group(1).split("."))


def test_the_aiohttp_floor_is_the_first_release_with_on_body_write() -> None:
    assert declared_floor("aiohttp") >= FIRST_AIOHTTP_WITH_ON_BODY_WRITE


def test_the_installed_aiohttp_writer_has_on_body_write() -> None:
    assert "on_body_write" in vars(AbstractStreamWriter)
