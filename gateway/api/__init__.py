"""The HTTP API for billing, engineers and dashboards (aiohttp, in the gateway's own loop).

aiohttp rather than FastAPI: it is already a dependency of the stack, it runs inside the
gateway's event loop with no second server, and the OpenAPI document is small enough to
keep by hand beside the routes (``openapi.py``) — a test checks that every route is in it
and schemathesis checks the server against it.
"""
