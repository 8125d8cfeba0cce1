"""The API's routes, one router per concept; `create_app` includes them all."""

from . import classify, embed, explain, images, search, service

ROUTERS = (service.router, search.router, embed.router, images.router, classify.router, explain.router)

__all__ = ["ROUTERS"]
