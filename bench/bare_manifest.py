"""The bare aiohttp handler the efficiency scenario compares pullcache with (bench/efficiency.py).

It answers every GET with one file's bytes and the headers pullcache sends for that manifest, and does
nothing else: no routing, no logging, no metrics. The difference to pullcache's req/s is what
pullcache's own work per request costs.

    python -m bench.bare_manifest PORT FILE 'Header: value' ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def app(body: bytes, headers: dict[str, str]) -> web.Application:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    application = web.Application()
    application.router.add_get("/{tail:.*}", answer)
    return application


def main(argv: list[str]) -> None:
    port, file, *header_lines = argv
    headers = dict(line.split(": ", 1) for line in header_lines)
    web.run_app(app(Path(file).read_bytes(), headers), host="127.0.0.1", port=int(port),
                access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
