"""Route modules, one concept each; ``ROUTERS`` is what ``create_app`` mounts."""

from service.api.routes import datasets, density, ops, runs, sample, train

ROUTERS = [train.router, runs.router, density.router, sample.router, datasets.router, ops.router]

__all__ = ["ROUTERS"]
