"""The storefront's services: business logic only.

Each runs as its own process, started by ``instrument demo`` the one-line way
(``instrument run -- python -m instrument.demo.services.<name> --port N``), so every span, metric,
log line, policy and fault around their calls comes from the toolkit, not from this code.

    gateway (ASGI)  -> orders (WSGI) -> database + queue -> fulfillment (consumer)
                                                              -> inventory (WSGI), billing (ASGI), orders
"""
