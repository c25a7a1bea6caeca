"""PLACEHOLDER (owner: registry API): the /v2/ handler table."""
from aiohttp import web

from pullcache.api import routes


async def _base(request: web.Request) -> web.StreamResponse:
    return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})


def setup(app: web.Application) -> None:
    routes.setup(app, {}, _base, _base)
