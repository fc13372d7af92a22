"""numba kernels: small pure functions over contiguous arrays (rules, prices, market, health, stress,
cascade), each with a plain-Python reference in tests/reference.py."""
