"""PLACEHOLDER (owner: observability): /healthz, /readyz, /metrics and the status page."""
from aiohttp import web


def setup(app: web.Application) -> None:
    pass
