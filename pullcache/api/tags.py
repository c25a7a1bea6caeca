"""Tag listing, and the `n`/`last` paging with a `Link: <...>; rel="next"` header it shares with _catalog."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import urlencode

from aiohttp import web

from pullcache.api.errors import NAME_UNKNOWN, PAGINATION_NUMBER_INVALID
from pullcache.api.targets import read_repository
from pullcache.cache.registry import RepositoryUnknown


def tag_order(tag: str) -> tuple[str, str]:
    """The spec's lexical order of tags: case-insensitive, ties broken by the exact bytes."""
    return tag.lower(), tag


def paginate(request: web.Request, items: Sequence[str],
             order: Callable[[str], object] = lambda item: item) -> tuple[list[str], dict[str, str]]:
    """One page of `items` (already sorted by `order`) as `?n=&last=` ask, and the headers to send.

    Items after `last` (which need not exist itself); at most `n` of them; a `Link` to the next page
    when more remain. `n=0` is an empty page without a Link, as the spec requires.
    """
    last = request.query.get("last")
    if last is not None:
        after = order(last)
        items = [item for item in items if order(item) > after]  # type: ignore[operator]
    if "n" not in request.query:
        return list(items), {}
    text = request.query["n"]
    if not (text.isascii() and text.isdigit()):  # isdigit alone admits "²", which int() refuses
        raise PAGINATION_NUMBER_INVALID.error(f"n={text!r} is not a non-negative integer", detail={"n": text})
    n = int(text)
    page = list(items[:n])
    if not page or len(items) <= n:
        return page, {}
    query = {"n": str(n), "last": page[-1]}
    if "ns" in request.query:
        query["ns"] = request.query["ns"]
    return page, {"Link": f'<{request.path}?{urlencode(query)}>; rel="next"'}


async def list_tags(request: web.Request, name: str, _: str) -> web.StreamResponse:
    """GET /v2/<name>/tags/list[?n=&last=]. For an upstream name, the tags cached from it."""
    repository = read_repository(request, name)[1]
    try:
        tags = await repository.tags()
    except RepositoryUnknown as exc:
        raise NAME_UNKNOWN.error(f"repository {name!r} {exc}", detail={"name": name}) from exc
    page, headers = paginate(request, sorted(tags, key=tag_order), tag_order)
    return web.json_response({"name": name, "tags": page}, headers=headers)
