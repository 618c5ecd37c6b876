"""The ``tfdeblend`` command line (installed as ``tfdeblend.cli``). Thin Click wrappers only."""
