"""Remote registries: one client per upstream, auth challenges, token cache, fetches."""
