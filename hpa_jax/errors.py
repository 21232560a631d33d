"""Errors that mean bad input, not a bug: the CLI prints their message and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (a file, a record, a key, a flag). The message names it."""
