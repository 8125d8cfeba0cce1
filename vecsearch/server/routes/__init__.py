"""The API's routes, one router per concept; `create_app` includes them all."""

from . import classify, embed, explain, images, search, service, writes

ROUTERS = (service.router, search.router, embed.router, images.router, classify.router, explain.router, writes.router)

__all__ = ["ROUTERS"]
