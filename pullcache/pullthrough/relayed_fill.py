"""A fill that may be relayed from another process rather than fetched from the upstream.

Relayed, its bytes are hashed and the last one held back until the digest is verified, as for any fill,
but it is not committed here: the process that fetched the blob commits it to the store both share (the
same directory, or the same bucket), and a second commit would write it twice (a second upload).
"""
from __future__ import annotations

from pullcache.cache.fill import Fill, State


class RelayableFill(Fill):
    relayed = False  # set by its producer before begin(), once it knows where the bytes come from

    async def commit(self) -> None:
        """Verify and publish; relayed, only verify (DigestMismatch or ValueError as for commit), then drop the
        temp file: readers read on through their descriptor."""
        if not self.relayed:
            await super().commit()
            return
        writer = self._writer
        assert writer is not None and self.state is State.RUNNING, "commit() before begin() or after the end"
        try:
            await writer.verify(self.digest, self.size)
        finally:
            await writer.abort()
        self.state = State.COMMITTED
        self._notify()
        self._producer_release()
