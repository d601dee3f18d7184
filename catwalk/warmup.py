"""Start-up work of a serving process, done before the first request rather than during it.

Django imports the URLconf, and with it every view module and what they import (the MCP SDK,
pydantic, the Anthropic client, django-oauth-toolkit …), on the first request. Those objects live
as long as the process, yet Python's cyclic garbage collector walks all of them on every full
collection: on a 2-core machine one such pass took 100 to 240 ms of a request's time, several
times the cost of the slowest page. Loading them at start-up and then freezing the heap
(`gc.freeze`, which moves every object alive into a generation the collector never scans) keeps
full collections down to what requests themselves leave behind.
"""

from __future__ import annotations

import gc


def load_and_freeze() -> None:
    """Import every view the URLconf names, collect once, and freeze what is left."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - evaluating it imports every view module
    gc.collect()
    gc.freeze()
