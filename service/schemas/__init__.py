"""The REST contract's shapes: pydantic request and response models, and strict-JSON values.

Owns ``runs`` (train requests, run and dataset resources; re-exports the next two), ``density``
(point density and sample queries), ``problems`` (problem+json), ``compare`` (runs side by side),
``sweeps`` (sweep requests and tables), ``series`` (latent ODE queries and series uploads) and
``json_values`` (NaN/inf to null).
Limits declared here are part of the contract and appear in ``openapi/openapi.json``. May import
``service.ml`` (registries, configs), ``service.db`` (rows to resources) and ``service.jobs`` (sweep
grid limits); never the API, serving or storage.
"""
