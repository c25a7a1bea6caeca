"""HTTP only: routes, request parsing and validation, OCI error bodies, auth."""
