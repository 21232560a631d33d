"""The test GCS emulator (tests/gcs_emulator.py) answers object reads as GCS does, where the
clients depend on it:

- every download URL (the JSON API's `?alt=media`, which tensorstore reads every object with,
  the download endpoint, the public path), whole or a byte range, carries the object's
  `x-goog-generation`/`x-goog-metageneration`;
- a read conditioned on the generation answers 304 (`ifGenerationNotMatch` holds not) or 412
  (`ifGenerationMatch` holds not), metadata and media alike;
- through tensorstore, an object read has the generation its write returned, and a read and a
  write conditioned on it (an OCDBT manifest update) succeed;
- it takes a burst of connections (a gcsfs `put` opens one per file, up to 100) while its
  accept loop is not running: the kernel completes all their handshakes (with socketserver's
  backlog of 5, six; the others wait on TCP's backoff for a place in the accept queue).
"""

import json
import selectors
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.gcs


def upload(emulator, name: str, data: bytes) -> dict:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(
        f"{emulator.url}/upload/storage/v1/b/{emulator.bucket}/o?{query}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def get(url: str, **headers) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as a:
            return a.status, {k.lower(): v for k, v in a.headers.items()}, a.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture
def stored(gcs_emulator):
    name = f"emulator-{uuid.uuid4().hex[:8]}/an object"
    return name, upload(gcs_emulator, name, b"0123456789")


def download_urls(emulator, name: str) -> list[str]:
    quoted = urllib.parse.quote(name, safe="")
    return [
        f"{emulator.url}/storage/v1/b/{emulator.bucket}/o/{quoted}?alt=media",
        f"{emulator.url}/download/storage/v1/b/{emulator.bucket}/o/{quoted}?alt=media",
        f"{emulator.url}/{emulator.bucket}/{urllib.parse.quote(name)}",
    ]


def test_every_download_carries_the_generation(gcs_emulator, stored):
    name, meta = stored
    for url in download_urls(gcs_emulator, name):
        for headers, status, body in (
            ({}, 200, b"0123456789"),
            ({"Range": "bytes=2-4"}, 206, b"234"),
        ):
            got = get(url, **headers)
            assert got[0] == status and got[2] == body, url
            assert got[1].get("x-goog-generation") == meta["generation"], url
            assert got[1].get("x-goog-metageneration") == meta["metageneration"], url


def test_reads_honour_generation_preconditions(gcs_emulator, stored):
    name, meta = stored
    live, other = meta["generation"], str(int(meta["generation"]) - 1)
    quoted = urllib.parse.quote(name, safe="")
    metadata = f"{gcs_emulator.url}/storage/v1/b/{gcs_emulator.bucket}/o/{quoted}?alt=json"
    for url in [*download_urls(gcs_emulator, name)[:2], metadata]:
        assert get(f"{url}&ifGenerationNotMatch={live}")[:3:2] == (304, b""), url
        assert get(f"{url}&ifGenerationMatch={other}")[0] == 412, url
        assert get(f"{url}&ifGenerationNotMatch={other}")[0] == 200, url
        assert get(f"{url}&ifGenerationMatch={live}")[0] == 200, url
    missing = download_urls(gcs_emulator, name + "-missing")[0]
    assert get(f"{missing}&ifGenerationNotMatch={live}")[0] == 404


def test_tensorstore_reads_and_rewrites_on_the_generation_it_read(gcs_emulator):
    import tensorstore as ts

    store = ts.KvStore.open({"driver": "gcs", "bucket": gcs_emulator.bucket}).result()
    key = f"emulator-{uuid.uuid4().hex[:8]}/manifest"
    written = store.write(key, b"first").result().generation
    read = store.read(key).result()
    assert (read.state, bytes(read.value), read.stamp.generation) == ("value", b"first", written)
    unchanged = store.read(key, if_not_equal=written).result()  # a cache's revalidation
    assert (unchanged.state, unchanged.stamp.generation) == ("unspecified", written)
    rewritten = store.write(key, b"second", if_equal=read.stamp.generation).result()
    assert rewritten.generation not in (written, b"")
    assert bytes(store.read(key).result().value) == b"second"


def test_a_burst_of_connections_waits_on_no_accept_queue():
    from gcs_emulator import Emulator

    emulator = Emulator().start()  # its own: it is stopped (SIGSTOP) here
    sockets, selector = [], selectors.DefaultSelector()
    try:
        emulator.proc.send_signal(signal.SIGSTOP)  # no accept() from now on: the queue fills
        for _ in range(100):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", emulator.port))
            sockets.append(s)
            selector.register(s, selectors.EVENT_WRITE)
        connected, deadline = set(), time.monotonic() + 5
        # the emulator stays stopped: past a full accept queue a handshake never completes
        while len(connected) < 100 and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected.add(key.fileobj)
                    selector.unregister(key.fileobj)
        assert len(connected) == 100
    finally:
        emulator.proc.send_signal(signal.SIGCONT)
        for s in sockets:
            s.close()
        emulator.stop()
