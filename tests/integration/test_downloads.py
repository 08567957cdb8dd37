"""Downloads against a real HTTP server on 127.0.0.1: resume, retries, timeouts, 404,
corrupt files, mirrors, and the CLI using a file that is not bundled."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import time

import pytest

from cloudstack_sysvm_seed import checksum, sources
from cloudstack_sysvm_seed.errors import ChecksumMismatch, SourceError
from cloudstack_sysvm_seed.settings import DownloadSettings

PAYLOAD = os.urandom(3 << 20)
FAST = dict(backoff=0.01, read_timeout=0.5, connect_timeout=2)


class Handler(http.server.BaseHTTPRequestHandler):
    """Behaviour by the first path segment: good, cut, slow, corrupt, norange, flaky, 404."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - the http.server API
        server = self.server
        kind = self.path.strip("/").split("/")[0]
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path.split("/", 2)[-1])
        if body is None or kind == "missing":
            self.send_error(404)
            return
        count = sum(1 for path, _ in server.requests if path == self.path)
        if kind == "slow":
            time.sleep(1.5)
        if kind == "flaky" and count == 1:
            self.send_error(503)
            return
        if kind == "corrupt":
            body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
        start = 0
        wanted = self.headers.get("Range")
        if wanted and kind != "norange":
            start = int(wanted.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if kind == "cut" and count == 1:
            self.wfile.write(body[start: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.files = {}
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def fetch(server, tmp_path, kind, data=PAYLOAD, expected=None, part=None, **settings):
    server.files["f.bin"] = data
    target = tmp_path / "cache" / "f.bin"
    if part is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cache" / "f.bin.part").write_bytes(part)
    source = sources.Source(sources.DOWNLOAD, str(target), f"{server.base}/{kind}/f.bin",
                            "/bundled/f.bin")
    digest = expected or checksum.Checksum("SHA-256", hashlib.sha256(data).hexdigest())
    return sources.fetch(source, digest, DownloadSettings(**{**FAST, **settings}))


def test_a_good_download_lands_in_the_cache_verified(http_server, tmp_path):
    path = fetch(http_server, tmp_path, "good")
    assert open(path, "rb").read() == PAYLOAD
    assert os.listdir(tmp_path / "cache") == ["f.bin"]


def test_a_cut_connection_is_resumed_with_range(http_server, tmp_path):
    path = fetch(http_server, tmp_path, "cut")
    assert open(path, "rb").read() == PAYLOAD
    first, second = [r for _, r in http_server.requests]
    # The retry asks only for what is missing (whole chunks kept before the cut).
    assert first is None and 0 < int(second[6:-1]) <= len(PAYLOAD) // 2


def test_a_partial_file_from_an_earlier_run_is_resumed(http_server, tmp_path):
    path = fetch(http_server, tmp_path, "good", part=PAYLOAD[:1000])
    assert open(path, "rb").read() == PAYLOAD
    assert [r for _, r in http_server.requests] == ["bytes=1000-"]


def test_a_server_that_ignores_range_restarts_from_zero(http_server, tmp_path):
    path = fetch(http_server, tmp_path, "norange", part=b"stale bytes")
    assert open(path, "rb").read() == PAYLOAD


def test_a_5xx_is_retried(http_server, tmp_path):
    assert open(fetch(http_server, tmp_path, "flaky"), "rb").read() == PAYLOAD
    assert len(http_server.requests) == 2


def test_404_fails_at_once(http_server, tmp_path):
    with pytest.raises(SourceError, match="HTTP 404"):
        fetch(http_server, tmp_path, "missing")
    assert len(http_server.requests) == 1


def test_a_slow_server_times_out_after_bounded_attempts(http_server, tmp_path):
    started = time.monotonic()
    with pytest.raises(SourceError, match="Read timed out .*3 attempt") as info:
        fetch(http_server, tmp_path, "slow", attempts=3)
    assert len(http_server.requests) == 3
    assert time.monotonic() - started < 10
    assert "/bundled/f.bin is missing" in str(info.value)


def test_a_corrupt_download_is_refused_and_not_kept(http_server, tmp_path):
    with pytest.raises(ChecksumMismatch, match="SHA-256"):
        fetch(http_server, tmp_path, "corrupt")
    assert os.listdir(tmp_path / "cache") == []


def test_mirror_urls_follow_upstreams_layout(tmp_path):
    from cloudstack_sysvm_seed import metadata
    meta = metadata.parse(
        "[default]\nversion = 4.22.0.0\ndownloadrepository = https://download.cloudstack.org/"
        "systemvm/\n[kvm-x86_64]\ntemplatename = t\nchecksum = \nfilename = f.qcow2.bz2\n"
        "downloadurl = https://download.cloudstack.org/systemvm/4.22/f.qcow2.bz2\n")
    spec = meta.specs[0]
    assert sources.download_url(spec, meta, None) == spec.url
    assert sources.download_url(spec, meta, "http://mirror/sysvm/") == \
        "http://mirror/sysvm/4.22/f.qcow2.bz2"
    without_key = metadata.parse(
        "[default]\nversion = 4.22.0.0\n[kvm-x86_64]\ntemplatename = t\nchecksum = \n"
        "filename = f.qcow2.bz2\ndownloadurl = https://example.org/a/b/4.22/f.qcow2.bz2\n")
    assert sources.download_url(without_key.specs[0], without_key, "http://m/x") == \
        "http://m/x/4.22/f.qcow2.bz2"


# --- the CLI with a file that is not bundled --------------------------------------------------


def serve_bundle(world, http_server):
    """Move the bundled KVM file onto the HTTP server, as a package without templates."""
    data = world.bundle.read_bytes()
    world.bundle.unlink()
    http_server.files[f"4.20/{world.kvm.filename}"] = data
    return data


def test_the_cli_downloads_a_missing_file_from_a_mirror_and_reuses_the_cache(
        world, stores_root, http_server):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/a1")
    serve_bundle(world, http_server)
    # metadata.ini points at a dead address; the mirror option rewrites it, as 4.22 does.
    run = world.run("--json", "--download-repository", f"{http_server.base}/good")
    assert run.code == 0, run.err
    (record,) = [r for r in json.loads(run.out) if r["action"] != "configure"]
    mirror_url = f"{http_server.base}/good/4.20/{world.kvm.filename}"
    assert record["source"] == f"downloaded from {mirror_url}"
    assert (world.runtime.parent / "cache" / world.kvm.filename).is_file()

    second_store, _ = world.nfs_store(zone, "10.1.0.2", "/export/a2")
    requests_before = len(http_server.requests)
    run = world.run("--json", "--download-repository", f"{http_server.base}/good")
    assert run.code == 0, run.err
    record = next(r for r in json.loads(run.out) if r["store_id"] == second_store)
    assert record["source"].startswith("cached ")
    assert len(http_server.requests) == requests_before


def test_an_empty_checksum_needs_allow_unverified_and_records_the_digest(
        world, stores_root, http_server):
    zone = world.builder.zone("east")
    world.builder.cluster(zone, "KVM")
    world.nfs_store(zone, "10.1.0.1", "/export/a1")
    metadata = world.templates / "metadata.ini"
    metadata.write_text(metadata.read_text().replace(world.kvm.checksum, ""))
    refused = world.run("--json")
    assert refused.code == 1
    assert "checksum is empty; refusing" in json.loads(refused.out)[0]["error"]
    run = world.run("--allow-unverified")
    assert run.code == 0, run.err
    assert "no checksum to verify" in run.err and "recording the computed {SHA-512}" in run.err
    (template,) = world.rows("vm_template", "name = %s", (world.kvm.templatename,))
    assert template["checksum"] == "{SHA-512}" + hashlib.sha512(
        world.bundle.read_bytes()).hexdigest()
