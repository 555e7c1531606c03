"""Parity cases for classic attention (additive / Bahdanau, multiplicative / Luong). Registered on import."""
