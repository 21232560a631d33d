"""A Google Cloud Storage emulator on 127.0.0.1 for the tests (`gcp-storage-emulator`).

`Emulator` starts `python -m gcp_storage_emulator` in memory on a free port with one bucket and
returns the environment that points every client at it: gcsfs (`STORAGE_EMULATOR_HOST`, through
`etils.epath`) and tensorstore, which Orbax uses for arrays (`TENSORSTORE_GCS_HTTP_URL`, with a
fake token). No real bucket and no network beyond the loopback are ever touched.

The emulator is run through this file (`python tests/gcs_emulator.py start ...`), which adds
what GCS does and the emulator does not:
- the `x-goog-generation`/`x-goog-metageneration` headers that GCS sends with every object
  download, on every download URL: the JSON API's `o/NAME?alt=media` (the emulator's `get`
  hands it to its module's `download`, so that is replaced too; tensorstore reads every object
  there), the download endpoint and the public path. tensorstore takes an object's generation
  from them; without them it records generation 0, and the next OCDBT manifest update
  conditioned on it fails: "Error writing/reading .../manifest.ocdbt: Malformed
  StorageGeneration", an Orbax checkpoint save that fails now and then and, once that
  generation is cached, on every try in the process;
- the generation preconditions of reads (metadata and media): `ifGenerationNotMatch=G` on an
  object whose generation is G is answered 304 Not Modified, `ifGenerationMatch=G` on one whose
  generation is not G 412, as GCS does; tensorstore revalidates a cached manifest so;
- concurrent connections: the emulator's `http.server.HTTPServer` serves one connection at a
  time, and a client holding an idle keep-alive connection (gcsfs uploads over several) blocks
  every other one, so a test would hang on the harness instead of failing on the code. Here a
  thread serves each connection; the requests themselves are handled one at a time (the
  emulator's storage is not thread-safe), as fast as before;
- many connections at once: the listen backlog is `LISTEN_BACKLOG` (1024), not socketserver's
  5. A gcsfs `put` of a folder opens a connection for each of its files at once (up to 100);
  past a full accept queue Linux drops the handshake silently and the client's TCP stack sends
  it again after 1, 2, 4, ... 64 s, so an upload of a hundred small files stalled for 10 s to
  ~2 minutes whenever the emulator's accept loop fell behind (a busy machine); GCS accepts them;
- a finished resumable upload session that answers again: GCS answers a request to a session
  whose upload has completed with 200 and the object's metadata, and a client whose answer to
  the final chunk was lost (a dropped connection) sends that chunk again and is done; the
  emulator forgets the session and answers 404, failing the upload (gcsfs writes every file
  opened for writing, orbax's small metadata files included, through such a session);
- the generation precondition `ifGenerationMatch` on uploads and deletes (0: only if the object
  does not exist yet; G: only if its live generation is G), answered 412 when it does not hold,
  as GCS does: `train/workdir_lock.py` takes a gs:// workdir's lock with it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http import HTTPStatus

BUCKET = "hpa-test"
# The listen backlog (socketserver's default is 5): gcsfs opens up to 100 connections at once (a
# directory `put` uploads every file concurrently, one connection per request since the emulator
# answers HTTP/1.0); a connection beyond a full accept queue is dropped by the kernel and retried
# with TCP's backoff (1, 2, 4, ... 64 s), which stalled uploads for up to ~2 minutes.
LISTEN_BACKLOG = 1024


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


def _read_precondition_failed(request, response, storage) -> bool:
    """Answer a read whose generation precondition does not hold as GCS does, and say so:
    `ifGenerationMatch=G` and the live generation is not G: 412; `ifGenerationNotMatch=G` and it
    is G: 304 Not Modified, no body. A missing object is left to the handler (404)."""
    live = _generation_of(storage, request.params["bucket_name"], request.params["object_id"])
    if live is None:
        return False
    match = request.query.get("ifGenerationMatch")
    if match and match[0] != live:
        _precondition_failed(response)
        return True
    not_match = request.query.get("ifGenerationNotMatch")
    if not_match and not_match[0] == live:
        response.status = HTTPStatus.NOT_MODIFIED
        return True
    return False


def _with_read_preconditions(read):
    """An object read (metadata or media) that honours the generation preconditions."""

    def handler(request, response, storage, *args, **kwargs):
        if not _read_precondition_failed(request, response, storage):
            return read(request, response, storage, *args, **kwargs)
        return None

    return handler


def _with_generation_headers(download):
    """The emulator's download handler, plus the object's generation headers."""

    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            return  # 404, or a precondition that did not hold: no object was sent
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])

    return handler


def _with_finished_sessions(upload_partial):
    """The emulator's resumable-chunk handler, answering a finished session as GCS does."""
    finished: dict[str, str] = {}  # upload_id -> the final answer's JSON

    def handler(request, response, storage, *args, **kwargs):
        upload_id = request.query.get("upload_id", [None])[0]
        if upload_id in finished:
            response["Content-type"] = "application/json"
            response._content = finished[upload_id]
            return None
        result = upload_partial(request, response, storage, *args, **kwargs)
        if upload_id and response.status in (HTTPStatus.OK, HTTPStatus.CREATED):
            finished[upload_id] = response._content
        return result

    return handler


_HANDLING = threading.Lock()  # one request at a time: the emulator's storage is not thread-safe
_PRECONDITION = threading.local()  # the ifGenerationMatch of the request being handled


def _precondition_failed(response) -> None:
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": "Precondition Failed"}})


def _generation_of(storage, bucket: str, name: str) -> str | None:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except Exception:  # not found
        return None


def _with_precondition(insert, delete, storage_class):
    """`insert` and `delete` that honour `ifGenerationMatch` as GCS does (412 when it fails)."""

    def checked_insert(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        _PRECONDITION.value = wanted[0] if wanted else None
        try:
            return insert(request, response, storage, *args, **kwargs)
        except _PreconditionFailed:
            _precondition_failed(response)
        finally:
            _PRECONDITION.value = None

    def checked_delete(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            bucket, name = request.params["bucket_name"], request.params["object_id"]
            if _generation_of(storage, bucket, name) != wanted[0]:
                return _precondition_failed(response)
        return delete(request, response, storage, *args, **kwargs)

    create_file = storage_class.create_file

    def checked_create_file(self, bucket_name, file_name, *args, **kwargs):
        wanted = getattr(_PRECONDITION, "value", None)
        if wanted is not None:
            live = _generation_of(self, bucket_name, file_name)
            if (live is None and wanted != "0") or (live is not None and live != wanted):
                raise _PreconditionFailed(file_name)
        return create_file(self, bucket_name, file_name, *args, **kwargs)

    storage_class.create_file = checked_create_file
    return checked_insert, checked_delete


class _PreconditionFailed(Exception):
    pass


def _serve(argv: list[str]) -> None:
    from http import server as http_server

    from gcp_storage_emulator import server
    from gcp_storage_emulator.__main__ import main
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.storage import Storage

    class ThreadingServer(http_server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = LISTEN_BACKLOG

    server.server.HTTPServer = ThreadingServer  # the emulator's `server.HTTPServer(...)`
    handle = server.Router.handle

    def serialized(self, method):
        with _HANDLING:
            return handle(self, method)

    server.Router.handle = serialized
    download = _with_read_preconditions(_with_generation_headers(objects.download))
    replaced = {objects.download: download, objects.get: _with_read_preconditions(objects.get)}
    insert, delete = _with_precondition(objects.insert, objects.delete, Storage)
    replaced[objects.insert], replaced[objects.delete] = insert, delete
    replaced[objects.upload_partial] = _with_finished_sessions(objects.upload_partial)
    objects.upload_partial = replaced[objects.upload_partial]  # insert calls it for POSTs
    # `get` calls the module's `download` for `?alt=media`: the JSON API's download URL, the one
    # tensorstore reads every object with; the routes alone would leave it without the headers
    objects.download = download
    for _, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler in replaced:
                methods[method] = replaced[handler]
    objects.insert = insert  # the router falls back to objects.insert for some upload paths
    main(argv)


if __name__ == "__main__":
    _serve(sys.argv[1:])
