"""The content store on disk: blobs, manifests and tags, upload sessions, the index."""
