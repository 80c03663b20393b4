"""Command-line interface (console script ``odeserve``)."""
