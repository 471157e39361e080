"""The storage plugin against libvirt's test driver, real files, and a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.plugin_steps import PluginSteps

from kernel.steps.inventory import InventoryStorage, StorageInventory
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
from subsystems.libvirt import disk_images, pools
from subsystems.libvirt.connections import close_all, connection

HostFactory = Callable[..., str]
MiB, GiB = 1 << 20, 1 << 30
ROOT = Path(__file__).resolve().parents[2]


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
    data = Path(made.path).read_bytes()  # not a qcow2 image: a raw disk, grown with a hole
    assert data[:300_000] == template.read_bytes() and len(data) == made.capacity_bytes == MiB
    assert storage.ok(create, VolumeInfo).created is False
    # a volume that no longer holds the template is not silently accepted as done
    Path(made.path).write_bytes(b"guest data")
    clash = storage.fail(create)
    assert (clash.error_code, clash.retryable) == ("volume_exists", False)
    missing = storage.fail(CreateVolume(volume=ref, capacity_bytes=MiB,
                                        template_path=str(tmp_path / "nope.qcow2")))
    assert (missing.error_code, missing.retryable) == ("source_missing", False)


def test_a_volume_from_a_qcow2_template_is_a_disk_of_the_asked_capacity(
        storage: PluginSteps, libvirt_uri: str, tmp_path: Path) -> None:
    # The template's file is 256 KiB and holds a 1 MiB disk; the volume asked for is 1 GiB.
    make_pool(storage, libvirt_uri, tmp_path / "primary")
    template = tmp_path / "images" / "tiny.qcow2"
    template.parent.mkdir()
    disk_images.empty_qcow2(template, MiB)
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-3")
    create = CreateVolume(volume=ref, capacity_bytes=GiB, template_path=str(template))
    made = storage.ok(create, VolumeInfo)
    assert made.capacity_bytes == GiB == disk_images.virtual_size(made.path)
    again = storage.ok(create, VolumeInfo)  # a repeat finds the grown disk its own
    assert (again.created, again.capacity_bytes) == (False, GiB)
    # at the template's own size it is the template's bytes
    same = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-4")
    exact = storage.ok(CreateVolume(volume=same, capacity_bytes=MiB,
                                    template_path=str(template)), VolumeInfo)
    assert exact.capacity_bytes == MiB and Path(exact.path).read_bytes() == \
        template.read_bytes()
    # smaller than the template's disk: refused before anything is made
    small = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-5")
    refused = storage.fail(CreateVolume(volume=small, capacity_bytes=MiB // 2,
                                        template_path=str(template)))
    assert (refused.error_code, refused.retryable) == ("capacity_too_small", False)
    names = sorted(connection(libvirt_uri).storagePoolLookupByName("primary").listVolumes())
    assert names == ["root-3", "root-4"]


def test_a_template_volume_that_cannot_grow_leaves_nothing(
        storage: PluginSteps, libvirt_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_pool(storage, libvirt_uri, tmp_path / "primary")
    template = tmp_path / "sample.qcow2"  # 512-byte clusters: it grows in place to 2 MiB
    template.write_bytes((ROOT / "examples" / "templates" / "empty-1m.qcow2").read_bytes())
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # and there is no qemu-img
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name="root-6")
    failed = storage.fail(CreateVolume(volume=ref, capacity_bytes=GiB,
                                       template_path=str(template)))
    assert (failed.error_code, failed.retryable) == ("unsupported", False)
    assert connection(libvirt_uri).storagePoolLookupByName("primary").listVolumes() == []
    assert list((tmp_path / "primary").iterdir()) == []


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
    assert got.virtual_size_bytes == 2 * MiB + 17  # not a qcow2 image: its length
    assert (store / "t1.qcow2").read_bytes() == source.read_bytes()
    assert storage.ok(args, TemplateDownloaded).downloaded is False
    assert sorted(p.name for p in store.iterdir()) == ["t1.qcow2"]  # no .part left

    delete = DeleteTemplate(directory=str(store), file_name="t1.qcow2")
    assert storage.ok(delete, Deleted).existed and not storage.ok(delete, Deleted).existed


def test_a_downloaded_qcow2_template_says_the_size_of_its_disk(storage: PluginSteps,
                                                                tmp_path: Path) -> None:
    source = tmp_path / "src.qcow2"
    disk_images.empty_qcow2(source, 3 * GiB)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    args = DownloadTemplate(url=source.as_uri(), directory=str(tmp_path / "images"),
                            file_name="t2.qcow2", checksum=f"sha256:{digest}")
    for _ in range(2):  # downloaded, then found in place
        got = storage.ok(args, TemplateDownloaded)
        assert (got.size_bytes, got.virtual_size_bytes) == (256 * 1024, 3 * GiB)


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


def test_a_shared_pool_is_one_directory_whichever_host_made_or_deletes_a_volume(
        storage: PluginSteps, libvirt_host_factory: HostFactory, tmp_path: Path) -> None:
    # two hosts, one pool directory (a shared pool): a volume made through one host is
    # resized and deleted through the other, and neither host lists it once its file is gone
    host_a, host_b = libvirt_host_factory("host-a"), libvirt_host_factory("host-b")
    shared = tmp_path / "shared"
    make_pool(storage, host_a, shared)
    make_pool(storage, host_b, shared)
    made = storage.ok(CreateVolume(volume=VolumeRef(host_uri=host_a, pool="primary",
                                                    name="root-1.qcow2"),
                                   capacity_bytes=MiB, format="qcow2"), VolumeInfo)
    assert Path(made.path).is_file()
    on_b = VolumeRef(host_uri=host_b, pool="primary", name="root-1.qcow2")
    grown = storage.ok(ResizeVolume(volume=on_b, capacity_bytes=2 * MiB), VolumeResized)
    assert grown.capacity_bytes == 2 * MiB and disk_images.virtual_size(made.path) == 2 * MiB

    def sizes(uri: str) -> list[tuple[str, int]]:
        found = storage.ok(InventoryStorage(host_uri=uri), StorageInventory)
        return [(v.name, v.capacity_bytes) for p in found.pools for v in p.volumes]

    assert sizes(host_a) == sizes(host_b) == [("root-1.qcow2", 2 * MiB)]
    assert storage.ok(DeleteVolume(volume=on_b), Deleted).existed
    assert not Path(made.path).exists()

    assert sizes(host_a) == sizes(host_b) == []
    again = VolumeRef(host_uri=host_a, pool="primary", name="root-1.qcow2")
    assert not storage.ok(DeleteVolume(volume=again), Deleted).existed
    # a file another host made is listed by both, with its size and format
    other = storage.ok(CreateVolume(volume=on_b, capacity_bytes=3 * MiB, format="qcow2"),
                       VolumeInfo)
    assert sizes(host_a) == sizes(host_b) == [("root-1.qcow2", 3 * MiB)]
    facts = connection(host_a).storagePoolLookupByName("primary") \
        .storageVolLookupByName("root-1.qcow2")
    assert (facts.path(), facts.info()[1]) == (other.path, 3 * MiB)


def test_concurrent_creates_through_hosts_of_one_shared_pool_all_stand(
        storage: PluginSteps, libvirt_host_factory: HostFactory, tmp_path: Path) -> None:
    # as a storage worker does with 8 steps at once: each create's lookup misses and rescans
    # the shared directory while the others write their files
    hosts = [libvirt_host_factory(f"host-{i}") for i in range(4)]
    shared = tmp_path / "shared"
    for uri in hosts:
        make_pool(storage, uri, shared)
    names = [f"vol-{i}.qcow2" for i in range(32)]

    def create(i: int) -> VolumeInfo:
        ref = VolumeRef(host_uri=hosts[i % len(hosts)], pool="primary", name=names[i])
        return storage.ok(CreateVolume(volume=ref, capacity_bytes=MiB, format="qcow2"),
                          VolumeInfo)

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(create, range(len(names))))
    assert all(m.created for m in made)
    for uri in hosts:
        found = storage.ok(InventoryStorage(host_uri=uri), StorageInventory)
        assert sorted(v.name for p in found.pools for v in p.volumes) == sorted(names)


def test_a_delete_whose_volume_vanishes_under_it_is_done_already(
        storage: PluginSteps, libvirt_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a second delivery of the same delete, running while the first removes the volume:
    # it found the volume, then could not read it; that is "gone already", not a failure
    make_pool(storage, libvirt_uri, tmp_path / "primary")
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name="data-1.qcow2")
    made = storage.ok(CreateVolume(volume=ref, capacity_bytes=MiB, format="qcow2"), VolumeInfo)
    found = pools.find_volume

    def found_then_deleted(conn: Any, pool: str, name: str) -> Any:
        vol = found(conn, pool, name)
        if vol is not None:  # the first delivery deletes it now
            vol.delete(0)
            Path(made.path).unlink()
        return vol

    monkeypatch.setattr(pools, "find_volume", found_then_deleted)
    assert storage.ok(DeleteVolume(volume=ref), Deleted).existed is False
    assert not Path(made.path).exists()
