"""The referrers API: manifests whose `subject` is a given digest, as an OCI image index.

Never 404 (the spec forbids it once the API is supported): an unknown digest or repository has
an empty index. For an upstream name it lists what the upstream lists (api/proxied.get_referrers),
through the referrers API or the tag schema; `artifactType` is filtered here either way.
"""
from __future__ import annotations

import json

from aiohttp import web

from pullcache.api import proxied
from pullcache.api.names import check_digest
from pullcache.api.targets import read_target, repository_of
from pullcache.mediatypes import OCI_INDEX


async def list_referrers(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """GET /v2/<name>/referrers/<digest>[?artifactType=]."""
    subject = check_digest(reference)
    target = read_target(request, name)
    if target.is_local:
        descriptors = await repository_of(request, target).referrers(subject)
    else:
        descriptors = await proxied.get_referrers(target, subject)
    headers = {}
    artifact_type = request.query.get("artifactType")
    if artifact_type:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    # Exactly the index media type, no charset parameter: the spec says what Content-Type MUST be.
    return web.Response(body=json.dumps(index).encode(), headers={"Content-Type": OCI_INDEX, **headers})
