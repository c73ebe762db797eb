"""Copy-on-write overlays: made with qemu-img on this host, or through a storage pool remotely.

For a local URI vmctl runs ``qemu-img create -b BASE`` itself into the connection's state
directory. For a remote URI the files live on the other host, so the overlay is a volume of a
directory storage pool there (default pool ``vmctl`` at ``/var/lib/libvirt/images/vmctl``,
defined and started by vmctl if missing) created with ``storageVolCreateXML`` and a
``<backingStore>``; the base image's path is then a path on that host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path

import libvirt

from vmctl.backend.records import inside
from vmctl.backend.tools import run_tool
from vmctl.errors import BackendError, InvalidSpec

from ._connection import Connection
from ._xml import Backing, pool_xml, volume_info, volume_xml

log = logging.getLogger("vmctl.libvirt")

QEMU_IMG_TIMEOUT = 60


def local_image_info(path: Path) -> tuple[int, str, bool]:
    """(virtual size, format, has a backing file) of a local image, from ``qemu-img info``."""
    proc = run_tool(["qemu-img", "info", "-U", "--output=json", str(path)], timeout=QEMU_IMG_TIMEOUT)
    try:
        info = json.loads(proc.stdout)
        return int(info["virtual-size"]), str(info["format"]), "backing-filename" in info
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"cannot read qemu-img info of {path}", command=proc.args, stdout=proc.stdout) from exc


class LocalOverlays:
    """Overlays as files in a directory on this host."""

    kind = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # The daemon's QEMU user must reach the overlays inside (libvirt chowns each file).
            if os.geteuid() == 0:
                directory.chmod(0o711)
        except OSError as exc:
            raise BackendError(f"cannot create the overlay directory {directory}: {exc}") from exc

    def backing(self, base: Path) -> Backing:
        _, fmt, has_backing = local_image_info(base)
        return Backing(path=str(base), format=fmt, standalone=not has_backing)

    def create(self, file_name: str, backing: Backing) -> str:
        path = self.directory / file_name
        if path.exists():
            raise BackendError(f"overlay {path} already exists")
        run_tool(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing.path, "-F", backing.format, str(path)],
            timeout=QEMU_IMG_TIMEOUT,
        )
        path.chmod(0o600)
        return str(path)

    def delete(self, path: str) -> None:
        """Delete an overlay this directory holds; the path comes from a domain's metadata, which
        anyone with access to the daemon may edit, so a path outside the directory is refused."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inside(self.directory, path, "overlay"))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)


class PoolOverlays:
    """Overlays as volumes of a directory storage pool on the (remote) libvirt host."""

    kind = "volume"

    def __init__(self, connection: Connection, pool: str, path: str) -> None:
        self.connection = connection
        self.pool_name = pool
        self.pool_path = path

    def _pool(self) -> libvirt.virStoragePool:
        def get(conn: libvirt.virConnect) -> libvirt.virStoragePool:
            try:
                pool = conn.storagePoolLookupByName(self.pool_name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                log.info("defining storage pool %s at %s on %s", self.pool_name, self.pool_path, conn.getURI())
                pool = conn.storagePoolDefineXML(pool_xml(self.pool_name, self.pool_path), 0)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)
            return pool

        return self.connection.call(f"storage pool {self.pool_name}", get)

    def backing(self, base: Path) -> Backing:
        def lookup(conn: libvirt.virConnect) -> str | None:
            try:
                vol = conn.storageVolLookupByPath(str(base))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                return None
            return str(vol.XMLDesc(0))

        xml = self.connection.call("virStorageVolLookupByPath", lookup)
        if xml is not None:
            self._capacity, fmt, has_backing = volume_info(xml)
        elif base.is_file():
            # Not in any pool over there; the same path exists here (a shared or copied file).
            self._capacity, fmt, has_backing = local_image_info(base)
        else:
            raise InvalidSpec(
                "disk",
                f"{base} is in no storage pool on {self.connection.uri}: define a dir pool for its directory",
            )
        return Backing(path=str(base), format=fmt, standalone=not has_backing)

    def create(self, file_name: str, backing: Backing) -> str:
        pool = self._pool()
        xml = volume_xml(file_name, self._capacity, backing)
        vol = self.connection.call("virStorageVolCreateXML", lambda _c: pool.createXML(xml, 0))
        return str(vol.path())

    def allocation(self, path: str) -> int:
        """Bytes the volume at ``path`` occupies on its host (virStorageVolGetInfo, which has the
        pool's backend measure it again); 0 if it is gone."""

        def allocation(conn: libvirt.virConnect) -> int:
            try:
                vol = conn.storageVolLookupByPath(path)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return 0
                raise
            return int(vol.info()[2])

        return int(self.connection.call("virStorageVolGetInfo", allocation))

    def delete(self, path: str) -> None:
        def delete(conn: libvirt.virConnect) -> None:
            try:
                vol = conn.storageVolLookupByPath(path)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return
                raise
            vol.delete(0)

        self.connection.call("virStorageVolDelete", delete)

    def exists(self, path: str) -> bool:
        def lookup(conn: libvirt.virConnect) -> bool:
            try:
                conn.storageVolLookupByPath(path)
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise

        return self.connection.call("virStorageVolLookupByPath", lookup)


def check_reachable(path: Path, what: str, need_read: bool, user: str = "libvirt-qemu") -> None:
    """Raise InvalidSpec unless the daemon's unprivileged QEMU user can reach ``path``.

    Every directory above it must be searchable by others; with ``need_read`` (files libvirt
    does not relabel, such as a shared base image) the file itself must be readable by others.
    """
    for parent in reversed(path.parents):
        try:
            mode = parent.stat().st_mode
        except OSError:
            return  # validation elsewhere reports missing paths
        if not mode & stat.S_IXOTH:
            raise InvalidSpec(
                what,
                f"{path} is not reachable by libvirt's QEMU user ({user}): directory {parent} is mode "
                f"{stat.S_IMODE(mode):04o}; keep images under /var/lib/libvirt/images or make the directories "
                "searchable (o+x)",
            )
    if need_read:
        mode = path.stat().st_mode
        if not mode & stat.S_IROTH:
            raise InvalidSpec(
                what, f"{path} is not readable by libvirt's QEMU user ({user}): mode {stat.S_IMODE(mode):04o}"
            )
