"""The numerical core: ODE solving, FFJORD and latent ODE models, training, data, checkpoints.

Owns the models (``models``), the solver wrapper with step budgets and typed failures (``ode``), the
divergence estimators, training loops, built-in and uploaded data, and the ``state_dict`` + JSON
checkpoint format. Imports torch, torchdiffeq and numpy only: nothing of the service, so it can be
used (and tested) without FastAPI, Celery or a database.
"""
