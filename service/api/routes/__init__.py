"""Route modules, one concept each; ``ROUTERS`` is what ``create_app`` mounts."""

from service.api.routes import datasets, density, ops, plots, predict, runs, sample, sweeps, train

ROUTERS = [train.router, runs.router, density.router, sample.router, datasets.router, ops.router]
ROUTERS += [sweeps.router, plots.router]
ROUTERS += [predict.router]

__all__ = ["ROUTERS"]
