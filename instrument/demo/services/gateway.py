"""The API gateway (ASGI, Starlette): admits customers at a bounded rate and fronts the orders service.

    POST /checkout        {"sku", "qty"} -> 202 {"order_id", "status"}; 429 over the rate limit;
                          503 "try again shortly" when orders is unavailable
    GET  /orders/{id}     the order's status; a cached answer (marked stale) when orders is unavailable

Degrades gracefully: a customer never sees a stack trace; payment trouble downstream shows as
"payment pending" and the last known answer is served when orders itself cannot be reached.
"""

from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from instrument import RateLimited
from instrument.demo.services._serve import arguments, serve_asgi
from instrument.policies import RateLimiter

MESSAGES = {
    "accepted": "order accepted",
    "reserved": "items reserved, charging card",
    "paid": "order paid, shipping soon",
    "payment_pending": "order accepted; payment pending, we will charge your card shortly",
    "out_of_stock": "sorry, out of stock",
}


def create_app(orders_url: str, *, rate: float = 30.0, burst: float = 15.0) -> Starlette:
    limiter = RateLimiter(rate, burst=burst, target="gateway")
    cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
    client = httpx.AsyncClient(base_url=orders_url, timeout=5.0)

    def remember(order: dict[str, Any]) -> None:
        cache[order["order_id"]] = order
        cache.move_to_end(order["order_id"])
        while len(cache) > 5000:
            cache.popitem(last=False)

    def answer(order: dict[str, Any], code: int = 200, **extra: Any) -> JSONResponse:
        status = order.get("status", "accepted")
        return JSONResponse({**order, "message": MESSAGES.get(status, status), **extra}, status_code=code)

    async def checkout(request: Request) -> JSONResponse:
        try:
            async with limiter.guard():
                item = await request.json()
                try:
                    response = await client.post("/orders", json={"sku": item["sku"], "qty": int(item.get("qty", 1))})
                except httpx.HTTPError:
                    return JSONResponse({"message": "the shop is busy, please try again shortly"}, status_code=503,
                                        headers={"retry-after": "1"})
                if response.status_code >= 500:
                    return JSONResponse({"message": "the shop is busy, please try again shortly"}, status_code=503,
                                        headers={"retry-after": "1"})
                order = response.json()
                remember(order)
                return answer(order, 202)
        except RateLimited:
            return JSONResponse({"message": "too many requests, slow down"}, status_code=429,
                                headers={"retry-after": "1"})

    async def order_status(request: Request) -> JSONResponse:
        order_id = request.path_params["order_id"]
        try:
            response = await client.get(f"/orders/{order_id}")
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 200:
            order = response.json()
            remember(order)
            return answer(order)
        if response is not None and response.status_code == 404:
            return JSONResponse({"message": "no such order"}, status_code=404)
        if order_id in cache:  # orders is unavailable: the last known answer beats an error
            return answer(cache[order_id], stale=True)
        return JSONResponse({"message": "order status unavailable, please try again shortly"}, status_code=503)

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[
        Route("/checkout", checkout, methods=["POST"]),
        Route("/orders/{order_id}", order_status, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("storefront API gateway", argv, orders="orders service base URL")
    serve_asgi(create_app(args.orders), args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
