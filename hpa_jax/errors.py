"""Errors the CLI reports by message, not by traceback: bad input (exit 2) and storage (exit 74)."""


class UserError(Exception):
    """Bad input from the user (a file, a record, a key, a flag). The message names it."""


class StorageError(OSError):
    """An output that could not be written, or an object that could not be read, after the
    retries a transient failure gets (a full disk, an object store that keeps failing). The
    message names the path; what was written before stays intact. The CLI exits with
    `STORAGE_EXIT` (74, EX_IOERR); the same command resumes once the storage works again."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


STORAGE_EXIT = 74
