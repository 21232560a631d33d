"""For test processes behind tests/fault_proxy.py: the storage clients' waits between retries
scaled down (`install(factor)`), so that a test measures what is retried, not how long a client
waits. gcsfs sleeps 1-32 s before each retry of a request (`gcsfs.retry.retry_request`);
hpa_jax.fileio and the checkpointer from `fileio.BACKOFF_SECONDS`. What is retried, and how
often, stays as it is."""

import asyncio


class _ScaledAsyncio:
    """`asyncio` with a shorter `sleep`, for gcsfs.retry's module global only."""

    def __init__(self, factor: float):
        self.factor = factor

    def __getattr__(self, name):
        return getattr(asyncio, name)

    async def sleep(self, seconds, *args):
        await asyncio.sleep(seconds * self.factor, *args)


def install(factor: float = 0.05) -> None:
    import gcsfs.retry

    from hpa_jax import fileio

    gcsfs.retry.asyncio = _ScaledAsyncio(factor)
    fileio.BACKOFF_SECONDS *= factor
