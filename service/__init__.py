"""odeserve: train and serve continuous-time generative models over REST.

Packages, from the core outwards (each may import only those before it, see its docstring;
``tests/test_layering.py`` holds the rule):

* ``ml``: models, solvers, training, checkpoints; imports nothing of the service.
* ``config``: settings from the environment.
* ``storage``: the models store (checkpoints, uploads).
* ``db``: tables, sessions, repositories, migrations.
* ``jobs``: the queue, broker scan, reconciler, sweep grids.
* ``plots``: figures as PNG/GIF bytes.
* ``schemas``: request and response models of the REST contract.
* ``serving``: model cache, dynamic batching, latent ODE queries, run figures.
* ``api``: the FastAPI application; ``cli``: the ``odeserve`` command and ``odeserve up``.
"""
