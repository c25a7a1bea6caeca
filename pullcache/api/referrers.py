"""The referrers API: manifests whose `subject` is a given digest, as an OCI image index.

Never 404 (the spec forbids it once the API is supported): an unknown digest or repository has
an empty index. The repository lists them (an upstream's lists what the upstream lists, through the
referrers API or the tag schema: pullthrough/repository.py); `artifactType` is filtered here either way.
"""
from __future__ import annotations

import json

from aiohttp import web

from pullcache.api.errors import NAME_UNKNOWN
from pullcache.api.names import check_digest
from pullcache.api.targets import read_repository
from pullcache.api.upstream_errors import upstream_error
from pullcache.mediatypes import OCI_INDEX
from pullcache.upstream.errors import UpstreamError


async def list_referrers(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """GET /v2/<name>/referrers/<digest>[?artifactType=]."""
    subject = check_digest(reference)
    _, repository = read_repository(request, name)
    try:
        descriptors = await repository.referrers(subject)
    except UpstreamError as exc:
        raise upstream_error(exc, NAME_UNKNOWN, f"the referrers of {subject}") from exc
    headers = {}
    artifact_type = request.query.get("artifactType")
    if artifact_type:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    # Exactly the index media type, no charset parameter: the spec says what Content-Type MUST be.
    return web.Response(body=json.dumps(index).encode(), headers={"Content-Type": OCI_INDEX, **headers})
