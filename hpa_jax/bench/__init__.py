"""Benchmarks behind `hpa-jax bench`: shared timing plumbing (core.py), one module per
benchmark (train.py, compile.py, input.py, segment.py, model.py), their flags (flags.py, light:
what `hpa-jax --help` imports) and `suite.run_benchmark`, which runs one by name."""
