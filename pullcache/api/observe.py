"""PLACEHOLDER (owner: observability): access log and HTTP metrics middleware."""
from aiohttp import web


@web.middleware
async def access(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    return await handler(request)
