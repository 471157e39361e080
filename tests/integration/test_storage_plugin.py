"""The storage plugin against libvirt's test driver, real files, and a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.plugin_steps import PluginSteps

from kernel.steps.storage import (
    CreatePool,
    CreateVolume,
    Deleted,
    DeletePool,
    DeleteTemplate,
    DeleteVolume,
    DownloadTemplate,
    MigrateVolume,
    PoolInfo,
    ResizeVolume,
    TemplateDownloaded,
    VolumeInfo,
    VolumeMigrated,
    VolumeRef,
    VolumeResized,
)
from subsystems.hypervisor.connections import close_all, connection

HostFactory = Callable[..., str]
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_connections() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def storage() -> PluginSteps:
    return PluginSteps("storage")


def make_pool(storage: PluginSteps, uri: str, path: Path, name: str = "primary") -> None:
    storage.ok(CreatePool(host_uri=uri, pool=name, path=str(path)), PoolInfo)


def test_create_pool_is_a_libvirt_pool_and_a_repeat_changes_nothing(
        storage: PluginSteps, libvirt_uri: str, tmp_path: Path) -> None:
    args = CreatePool(host_uri=libvirt_uri, pool="primary", path=str(tmp_path / "primary"))
    first = storage.ok(args, PoolInfo)
    assert (first.created, first.path) == (True, str(tmp_path / "primary"))
    assert storage.ok(args, PoolInfo).created is False
    pool = connection(libvirt_uri).storagePoolLookupByName("primary")
    assert pool.isActive() and pool.autostart() and (tmp_path / "primary").is_dir()
    elsewhere = storage.fail(CreatePool(host_uri=libvirt_uri, pool="primary",
                                        path=str(tmp_path / "other")))
    assert (elsewhere.error_code, elsewhere.retryable) == ("conflict", False)
    assert storage.ok(DeletePool(host_uri=libvirt_uri, pool="primary"), Deleted).existed
    assert not storage.ok(DeletePool(host_uri=libvirt_uri, pool="primary"), Deleted).existed
    assert connection(libvirt_uri).listAllStoragePools() == []


def test_blank_volume_lifecycle(storage: PluginSteps, libvirt_uri: str, tmp_path: Path) -> None:
    make_pool(storage, libvirt_uri, tmp_path / "primary")
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-1")
    create = CreateVolume(volume=ref, capacity_bytes=4 * MiB, format="raw")
    made = storage.ok(create, VolumeInfo)
    assert (made.created, made.capacity_bytes, made.format) == (True, 4 * MiB, "raw")
    assert storage.ok(create, VolumeInfo).created is False
    vol = connection(libvirt_uri).storagePoolLookupByName("primary") \
        .storageVolLookupByName("root-1")
    assert vol.info()[1] == 4 * MiB and vol.path() == made.path
    # the test driver made no file; the plugin made a sparse one
    assert os.path.getsize(made.path) == 4 * MiB

    resize = ResizeVolume(volume=ref, capacity_bytes=8 * MiB)
    grown = storage.ok(resize, VolumeResized)
    assert (grown.how, grown.capacity_bytes) == ("recreated", 8 * MiB)  # vol.resize: NO_SUPPORT
    assert storage.ok(resize, VolumeResized).how == "already"
    vol = connection(libvirt_uri).storagePoolLookupByName("primary") \
        .storageVolLookupByName("root-1")
    assert vol.info()[1] == 8 * MiB and os.path.getsize(made.path) == 8 * MiB
    shrink = storage.fail(ResizeVolume(volume=ref, capacity_bytes=MiB))
    assert (shrink.error_code, shrink.retryable) == ("shrink_refused", False)

    delete = DeleteVolume(volume=ref)
    assert storage.ok(delete, Deleted, compensation=True).existed
    assert not storage.ok(delete, Deleted).existed
    assert not os.path.exists(made.path)
    assert [v.name() for v in connection(libvirt_uri).storagePoolLookupByName("primary")
            .listAllVolumes()] == []


def test_resize_keeps_the_volume_content(storage: PluginSteps, libvirt_uri: str,
                                         tmp_path: Path) -> None:
    make_pool(storage, libvirt_uri, tmp_path / "primary")
    template = tmp_path / "tpl.raw"
    template.write_bytes(b"boot" * 1000)
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-1")
    made = storage.ok(CreateVolume(volume=ref, capacity_bytes=MiB, format="raw",
                                   template_path=str(template)), VolumeInfo)
    storage.ok(ResizeVolume(volume=ref, capacity_bytes=2 * MiB), VolumeResized)
    data = Path(made.path).read_bytes()
    assert data[:4000] == template.read_bytes() and len(data) == 2 * MiB


def test_volume_from_template_and_its_idempotence(storage: PluginSteps, libvirt_uri: str,
                                                  tmp_path: Path) -> None:
    make_pool(storage, libvirt_uri, tmp_path / "primary")
    template = tmp_path / "images" / "centos.qcow2"
    template.parent.mkdir()
    template.write_bytes(os.urandom(300_000))
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-2")
    create = CreateVolume(volume=ref, capacity_bytes=MiB, template_path=str(template))
    made = storage.ok(create, VolumeInfo)
    assert Path(made.path).read_bytes() == template.read_bytes()
    assert storage.ok(create, VolumeInfo).created is False
    # a volume that no longer holds the template is not silently accepted as done
    Path(made.path).write_bytes(b"guest data")
    clash = storage.fail(create)
    assert (clash.error_code, clash.retryable) == ("volume_exists", False)
    missing = storage.fail(CreateVolume(volume=ref, capacity_bytes=MiB,
                                        template_path=str(tmp_path / "nope.qcow2")))
    assert (missing.error_code, missing.retryable) == ("source_missing", False)


def test_migrate_volume_between_hosts(storage: PluginSteps, libvirt_host_factory: HostFactory,
                                      tmp_path: Path) -> None:
    host_a, host_b = libvirt_host_factory("host-a"), libvirt_host_factory("host-b")
    make_pool(storage, host_a, tmp_path / "a")
    make_pool(storage, host_b, tmp_path / "b", name="secondary")
    template = tmp_path / "tpl.raw"
    template.write_bytes(os.urandom(100_000))
    source = VolumeRef(host_uri=host_a, pool="primary", name="data-1")
    target = VolumeRef(host_uri=host_b, pool="secondary", name="data-1")
    storage.ok(CreateVolume(volume=source, capacity_bytes=MiB, format="raw",
                            template_path=str(template)), VolumeInfo)
    migrate = MigrateVolume(source=source, target=target)
    moved = storage.ok(migrate, VolumeMigrated)
    assert (moved.how, moved.volume.capacity_bytes) == ("file", MiB)
    data = Path(moved.volume.path).read_bytes()
    assert data[:100_000] == template.read_bytes() and len(data) == MiB
    assert moved.sha256 == hashlib.sha256(data).hexdigest()
    assert connection(host_a).storagePoolLookupByName("primary").listAllVolumes() == []
    assert not (tmp_path / "a" / "data-1").exists()
    assert storage.ok(migrate, VolumeMigrated).how == "already"


def test_download_template_from_a_file(storage: PluginSteps, tmp_path: Path) -> None:
    source = tmp_path / "src.qcow2"
    source.write_bytes(os.urandom(2 * MiB + 17))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store = tmp_path / "images"
    args = DownloadTemplate(url=source.as_uri(), directory=str(store), file_name="t1.qcow2",
                            checksum=f"sha256:{digest}")
    got = storage.ok(args, TemplateDownloaded)
    assert (got.downloaded, got.size_bytes, got.sha256) == (True, 2 * MiB + 17, digest)
    assert (store / "t1.qcow2").read_bytes() == source.read_bytes()
    assert storage.ok(args, TemplateDownloaded).downloaded is False
    assert sorted(p.name for p in store.iterdir()) == ["t1.qcow2"]  # no .part left

    delete = DeleteTemplate(directory=str(store), file_name="t1.qcow2")
    assert storage.ok(delete, Deleted).existed and not storage.ok(delete, Deleted).existed


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(storage: PluginSteps,
                                                           tmp_path: Path) -> None:
    source = tmp_path / "src.iso"
    source.write_bytes(b"not what was promised")
    store = tmp_path / "images"
    outcome = storage.fail(DownloadTemplate(
        url=source.as_uri(), directory=str(store), file_name="t.iso",
        checksum="md5:" + hashlib.md5(b"something else").hexdigest()))
    assert (outcome.error_code, outcome.retryable) == ("checksum_mismatch", False)
    assert list(store.iterdir()) == []
    missing = storage.fail(DownloadTemplate(
        url=(tmp_path / "absent").as_uri(), directory=str(store), file_name="t.iso",
        checksum="md5:" + "0" * 32))
    assert (missing.error_code, missing.retryable) == ("source_missing", False)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server for `tmp_path/www`, stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_template_over_http(storage: PluginSteps, tmp_path: Path,
                                     http_root: tuple[Path, str]) -> None:
    root, base = http_root
    (root / "debian.qcow2").write_bytes(os.urandom(MiB))
    md5 = hashlib.md5((root / "debian.qcow2").read_bytes()).hexdigest()
    got = storage.ok(DownloadTemplate(url=f"{base}/debian.qcow2", directory=str(tmp_path / "is"),
                                      file_name="debian.qcow2", checksum=f"md5:{md5}"),
                     TemplateDownloaded)
    assert got.downloaded and got.checksum == f"md5:{md5}"
    assert (tmp_path / "is" / "debian.qcow2").read_bytes() == (root / "debian.qcow2").read_bytes()
    not_found = storage.fail(DownloadTemplate(url=f"{base}/nope", directory=str(tmp_path / "is"),
                                              file_name="x", checksum=f"md5:{md5}"))
    assert (not_found.error_code, not_found.retryable) == ("download_failed", False)


def test_an_unreachable_server_is_retryable(storage: PluginSteps, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = storage.fail(DownloadTemplate(
        url=f"http://127.0.0.1:{port}/t.qcow2", directory=str(tmp_path), file_name="t",
        checksum="md5:" + "0" * 32, timeout_seconds=5))
    assert (outcome.error_code, outcome.retryable) == ("download_failed", True)
