"""Workflows over the layers below: the demo and its cell stage, as library functions.

Each takes options and returns a typed result; each step is a call into the library behind one
`hpa-jax` command, and steps pass values, not files they wrote (files are outputs for people).
"""
