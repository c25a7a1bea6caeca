"""Request middlewares: OCI error bodies for everything that goes wrong below a handler."""
from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from pullcache.api.appkeys import STORE
from pullcache.api.errors import INSUFFICIENT_STORAGE, INTERNAL_ERROR, UNAVAILABLE, RegistryError
from pullcache.cache.errors import StorageMisconfigured, StorageUnavailable
from pullcache.cache.files import StoreFullError

log = logging.getLogger("pullcache.api")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """RegistryError -> its JSON body; a full disk -> 507; the object store out of reach -> 503 saying why;
    anything unexpected -> 500, logged once."""
    try:
        return await handler(request)
    except RegistryError as exc:
        return exc.response(head=request.method == "HEAD")
    except StoreFullError as exc:
        log.error("disk full: %s", exc)
        request.app[STORE].report_disk_full()  # eviction frees cached content for the next write
        full = INSUFFICIENT_STORAGE.error("the registry's disk is full; the write was discarded")
        return full.response(head=request.method == "HEAD")
    except (StorageUnavailable, StorageMisconfigured) as exc:
        log.warning("storage failed answering %s %s: %s", request.method, request.path, exc)
        return UNAVAILABLE.error(f"storage unavailable: {exc}").response(head=request.method == "HEAD")
    except web.HTTPException:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) or request.transport is None or request.transport.is_closing():
            raise  # the client went away; there is nobody to answer
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return INTERNAL_ERROR.error(f"internal error: {exc.__class__.__name__}").response(head=request.method == "HEAD")
