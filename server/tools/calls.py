"""How many tool calls of one tenant may run at once."""

from __future__ import annotations

import anyio


class TenantCalls:
    """At most `per_tenant` calls of one tenant run at once; its others wait their turn on the event loop,
    holding no worker thread. The server's worker threads (anyio's, 40) are shared by every tenant: without
    this, one tenant's burst of slow calls (searches that scan, writes queued behind a slow hook) could take
    them all, and every other tenant's calls would wait for it."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._limiters: dict[str, anyio.CapacityLimiter] = {}  # one per tenant that made a call: tokens bound them

    def slot(self, tenant: str) -> anyio.CapacityLimiter:
        """`async with calls.slot(tenant):` around one call of `tenant`."""
        limiter = self._limiters.get(tenant)
        if limiter is None:
            limiter = self._limiters[tenant] = anyio.CapacityLimiter(self.per_tenant)
        return limiter
