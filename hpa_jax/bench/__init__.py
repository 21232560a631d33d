"""Benchmarks behind `hpa-jax bench`: shared timing plumbing (core.py) and the input pipeline
benchmark (input.py). Library functions only; the command module parses flags and calls them."""
