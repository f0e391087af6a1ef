"""The billing (payment) service (ASGI, Starlette): charges cards.

    POST   /charge          {"order_id", "amount"} -> 200 {"payment_id"}
    PUT    /admin/outage    {"rules": "..."}: rehearse a payment-provider outage with the toolkit's own
                            fault rules (``instrument.faults.inject``) until
    DELETE /admin/outage    ends it

The outage is the toolkit's server-side fault injection (``server:/charge: status 503 50%`` ...),
applied by its ASGI middleware, so /charge slows down and fails exactly as the rules say.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from instrument import faults
from instrument.demo.services._serve import arguments, serve_asgi


def create_app() -> Starlette:
    outage: list[faults.inject] = []

    async def charge(request: Request) -> JSONResponse:
        payment = await request.json()
        await asyncio.sleep(random.uniform(0.005, 0.03))
        return JSONResponse({"payment_id": uuid.uuid4().hex[:12], "order_id": payment["order_id"]})

    async def start_outage(request: Request) -> JSONResponse:
        rules = (await request.json())["rules"]
        while outage:
            outage.pop().remove()
        scope = faults.inject(rules)
        scope.__enter__()
        outage.append(scope)
        return JSONResponse({"outage": True, "rules": [rule.text for rule in scope.rules]})

    async def end_outage(_request: Request) -> JSONResponse:
        injected = 0
        while outage:
            scope = outage.pop()
            injected += scope.injected
            scope.remove()
        return JSONResponse({"outage": False, "injected": injected})

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/charge", charge, methods=["POST"]),
        Route("/admin/outage", start_outage, methods=["PUT"]),
        Route("/admin/outage", end_outage, methods=["DELETE"]),
        Route("/health", health, methods=["GET"]),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("storefront billing service", argv)
    serve_asgi(create_app(), args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
