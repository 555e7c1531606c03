"""Parity cases for the GRU cell and layer. Registered on import."""
