"""Route modules, one concept each; ``ROUTERS`` is what ``create_app`` mounts."""

from service.api.routes import (
    compare,
    datasets,
    density,
    events,
    ops,
    plots,
    predict,
    runs,
    sample,
    sweeps,
    train,
)

ROUTERS = [train.router, compare.router, runs.router, density.router, sample.router, datasets.router]
ROUTERS += [ops.router]
ROUTERS += [sweeps.router, plots.router]
ROUTERS += [predict.router]
ROUTERS += [events.router]  # checks its own key (EventSource: ?api_key=)

__all__ = ["ROUTERS"]
