"""A Google Cloud Storage emulator on 127.0.0.1 for the tests (`gcp-storage-emulator`).

`Emulator` starts `python -m gcp_storage_emulator` in memory on a free port with one bucket and
returns the environment that points every client at it: gcsfs (`STORAGE_EMULATOR_HOST`, through
`etils.epath`) and tensorstore, which Orbax uses for arrays (`TENSORSTORE_GCS_HTTP_URL`, with a
fake token). No real bucket and no network beyond the loopback are ever touched.

The emulator is run through this file (`python tests/gcs_emulator.py start ...`), which adds the
`x-goog-generation`/`x-goog-metageneration` headers that GCS sends with every object download
and the emulator leaves out: tensorstore reads an object's generation from them, and without
them an Orbax (OCDBT) checkpoint of more than a few arrays fails ("Malformed StorageGeneration"
reading its manifest).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "hpa-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    @property
    def env(self) -> dict[str, str]:
        """The variables that send gcsfs and tensorstore to this emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:1",
            "GOOGLE_CLOUD_PROJECT": "test",
            # the emulator has no gRPC control plane for gcsfs's bucket-layout lookup
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def start(self) -> Emulator:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "start",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--in-memory",
                f"--default-bucket={self.bucket}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the GCS emulator did not start on {self.url}") from None
                time.sleep(0.1)

    def wipe(self) -> None:
        """Delete every object, keep the bucket."""
        urllib.request.urlopen(self.url + "/wipe?keep-buckets=true", timeout=10).close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _with_generation_headers(download):
    """The emulator's download handler, plus the object's generation headers."""

    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the handler answered 404 already
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])

    return handler


def _serve(argv: list[str]) -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.__main__ import main
    from gcp_storage_emulator.handlers import objects

    original = objects.download
    objects.download = _with_generation_headers(original)  # objects.get(alt=media) calls it
    for _, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is original:
                methods[method] = objects.download
    main(argv)


if __name__ == "__main__":
    _serve(sys.argv[1:])
