"""`GET /v1/docs`: the admin API's OpenAPI document as a page (`kernel.contracts.docs_page`)."""

from aiohttp import web

from kernel.contracts.docs_page import PAGE


async def docs_page(_: web.Request) -> web.Response:
    """The docs page."""
    return web.Response(text=PAGE, content_type="text/html")
