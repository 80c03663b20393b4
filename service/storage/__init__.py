"""Where bytes live: checkpoints, uploaded point sets and series, under ``MODELS_STORE``.

Owns ``models_store`` (the directory layout, every name derived from a validated UUID, and atomic
writes) and ``series_store`` (uploaded time series). May import ``service.ml`` only (errors, series
containers); the database records digests of what is stored here, the store itself knows no rows.
"""
