"""The thin pyfuse3 adapter: kernel requests in, engine calls out. The only place errors become errno values.

pyfuse3 unmounts the whole filesystem when a handler raises anything but FUSEError, so every handler runs
inside ``_errno_boundary``: expected failures (a remote file that cannot be read) become EIO/EACCES with one
log line naming the URL and cause; anything unexpected is logged with its traceback and also becomes EIO,
so one bug fails one request instead of every reader.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from rangefs.engine import FileEngine
from rangefs.errors import RangefsError, RemoteError, RemoteStatusError
from rangefs.logthrottle import LogThrottle
from rangefs.namespace import DirectoryNode, FileNode, Namespace, Node, TreeChange

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_XATTR_PREFIX = b"user.rangefs."
# Live statistics of the whole mount, as JSON, on the root directory (read by ``rangefs stats``).
STATS_XATTR = b"user.rangefs.stats"
# The daemon's pid and the outcome of its last reload, as JSON, on the root directory (read by ``rangefs reload``).
RELOAD_XATTR = b"user.rangefs.reload"
# The kernel refuses xattr values larger than this (XATTR_SIZE_MAX): long paths shorten the busiest files' list.
_XATTR_SIZE_MAX = 64 * 1024


def _errno_boundary(handler: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except RemoteError as error:
            operations = args[0]
            assert isinstance(operations, RangefsOperations)
            operations.log_remote_failure(handler.__name__, error)
            raise pyfuse3.FUSEError(_errno_of(error)) from None
        except RangefsError as error:
            log.warning("%s failed: %s", handler.__name__, error)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s; answering EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


def _errno_of(error: RemoteError) -> int:
    if isinstance(error, RemoteStatusError) and error.status in (401, 403):
        return errno.EACCES
    return errno.EIO


async def _refuse_write(*_args: Any, **_kwargs: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


class RangefsOperations(pyfuse3.Operations):
    """Presents a Namespace of remote files, read through a FileEngine."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        namespace: Namespace,
        engine: FileEngine,
        *,
        attr_timeout: float,
        block_size: int,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.engine = engine
        self._attr_timeout = attr_timeout
        self._block_size = block_size
        self._uid, self._gid = os.getuid(), os.getgid()
        self._mount_time_ns = time.time_ns()
        self._inode_of_file = {node.file_index: node.inode for node in namespace.files()}
        self._log_throttle = LogThrottle()
        self.reload_status: dict[str, object] = {}

    # Every request that could change something is refused: this filesystem is read-only.
    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _refuse_write
    write = create = setxattr = removexattr = _refuse_write

    def log_remote_failure(self, operation: str, error: RemoteError) -> None:
        # Keyed by the kind of failure, not its words: a host that is down fails each read with a message of
        # its own (how long it has been down), and one line per file is what an offline reader wants.
        kind = f"{type(error).__name__} {getattr(error, 'status', '')}"
        admitted, held_back = self._log_throttle.admit(f"{error.url}\0{kind}")
        if admitted:
            suffix = f" ({held_back} more like it suppressed)" if held_back else ""
            log.warning("%s of %s failed: %s%s", operation, error.url, error.cause, suffix)

    async def invalidate_file(self, file_index: int) -> None:
        """Make the kernel forget attributes and cached pages of a file whose remote version changed."""
        inode = self._inode_of_file.get(file_index)
        if inode is None:
            return  # removed by a reload and closed: the kernel holds nothing of it any more
        # In a worker thread: the kernel may hold a page lock while it waits for a read this loop must answer.
        try:
            # Abandoned on cancel: at unmount the kernel may never release what it waits for, and the daemon
            # must still exit (the thread ends with the process).
            await trio.to_thread.run_sync(
                pyfuse3.invalidate_inode, pyfuse3.InodeT(inode), False, abandon_on_cancel=True
            )
        except OSError as error:
            log.debug("cannot invalidate inode %d: %s", inode, error)
        except Exception:  # called from service tasks (probes): never let it end the mount
            log.warning("cannot invalidate inode %d", inode, exc_info=True)

    async def tree_changed(self, change: TreeChange) -> None:
        """After a reload changed the namespace: the kernel forgets the directory entries that went, appeared
        or now name another inode, so `ls` and lookups see the new tree at once."""
        for node in change.added:
            self._inode_of_file[node.file_index] = node.inode
        for node in change.removed:
            self._forget_if_closed(node)
        for parent, name in change.names:
            # In a worker thread, as invalidate_file: the kernel locks the directory, which a lookup this
            # loop must answer may hold.
            try:
                await trio.to_thread.run_sync(
                    pyfuse3.invalidate_entry,
                    pyfuse3.InodeT(parent),
                    pyfuse3.FileNameT(os.fsencode(name)),
                    abandon_on_cancel=True,
                )
            except OSError as error:
                log.debug("cannot invalidate entry %s of inode %d: %s", name, parent, error)  # not cached
        for directory in {parent for parent, _ in change.names}:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.InodeT(directory), True)
            except OSError as error:
                log.debug("cannot invalidate inode %d: %s", directory, error)

    def _forget_if_closed(self, node: FileNode) -> None:
        if not self.engine.known(node.file_index):
            self.namespace.forget(node.inode)
            self._inode_of_file.pop(node.file_index, None)

    def _node(self, inode: int) -> Node:
        node = self.namespace.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _attributes(self, node: Node, *, wait: bool = True) -> pyfuse3.EntryAttributes:
        """A node's attributes; a file's once its probe has ended, or without ``wait`` a placeholder (size 0)
        that the kernel must not keep (zero timeouts: the next lookup or stat asks again, and waits)."""
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(node.inode)
        attrs.entry_timeout = attrs.attr_timeout = self._attr_timeout
        attrs.st_uid, attrs.st_gid = self._uid, self._gid
        attrs.st_blksize = self._block_size
        mtime_ns = self._mount_time_ns
        if isinstance(node, FileNode):
            if not self.engine.known(node.file_index):
                raise pyfuse3.FUSEError(errno.ENOENT)  # removed by a reload, and no longer open
            file = await self.engine.metadata(node.file_index) if wait else self.engine.probed(node.file_index)
            if file is None or file.metadata is None or file.failure is not None:
                # Not probed yet, or the probe failed: attributes the kernel must not keep, or a file that comes
                # back would keep its placeholder size until the attribute timeout.
                attrs.entry_timeout = attrs.attr_timeout = 0
            size = file.metadata.size if file and file.metadata else 0
            mtime = file.metadata.mtime if file and file.metadata else None
            if mtime is not None:
                mtime_ns = int(mtime * 1e9)
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
            attrs.st_nlink = 1
            attrs.st_size = size
            attrs.st_blocks = -(-size // 512)
        else:
            assert isinstance(node, DirectoryNode)
            subdirectories = sum(isinstance(child, DirectoryNode) for child in node.children.values())
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
            attrs.st_nlink = 2 + subdirectories
        attrs.st_atime_ns = attrs.st_ctime_ns = attrs.st_mtime_ns = mtime_ns
        return attrs

    @_errno_boundary
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.namespace.lookup(parent_inode, os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self._attributes(node)

    @_errno_boundary
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if isinstance(node, FileNode):
            # Nothing known of the file (its probe failed, nothing stored): no size to show, so stat, ls -l and
            # find say it fails (EIO; EACCES for 401/403) rather than show an empty file, and a server that came
            # back is seen here too. Lookup still finds the name, so getfattr shows user.rangefs.error and open
            # probes again (mount.py: no default_permissions). Not logged: the probe logged its failure.
            file = await self.engine.recheck(node.file_index)
            if file.metadata is None and file.failure is not None:
                raise pyfuse3.FUSEError(_errno_of(file.failure))
        return await self._attributes(node)

    async def access(self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext) -> bool:
        # access(2) and chdir ask here (no default_permissions): everything reads, directories search, files
        # never execute; writes the kernel refuses itself (a read-only mount).
        return not (mode & os.X_OK and isinstance(self._node(inode), FileNode))

    @_errno_boundary
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if not isinstance(self._node(inode), DirectoryNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    @_errno_boundary
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self._node(fh)
        assert isinstance(directory, DirectoryNode)
        children = directory.sorted_children()
        # Names at once: a file still being probed (a slow or dead host) is listed with placeholder attributes
        # the kernel does not keep, so `ls` never waits for probes and `ls -l` waits only in its own stat.
        for position in range(start_id, len(children)):
            attrs = await self._attributes(children[position], wait=False)
            if not pyfuse3.readdir_reply(token, os.fsencode(children[position].name), attrs, position + 1):
                break

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    @_errno_boundary
    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if not isinstance(node, FileNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        if not self.engine.known(node.file_index):
            raise pyfuse3.FUSEError(errno.ENOENT)
        handle = await self.engine.open(node.file_index)
        # keep_cache: pages the kernel holds stay valid across opens of one version, so warm re-reads run at
        # page-cache speed; the first open of a new version makes the kernel drop them.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(handle), keep_cache=self.engine.keeps_kernel_cache(handle))

    @_errno_boundary
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return await self.engine.read(fh, off, size)

    @_errno_boundary
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        index = self.engine.file_index(fh)
        self.engine.release(fh)
        inode = self._inode_of_file.get(index)
        node = self.namespace.get(inode) if inode is not None else None
        if isinstance(node, FileNode) and node.file_index == index:
            self._forget_if_closed(node)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    @_errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        known = [file.metadata.size for file in self.engine.files.values() if file.metadata is not None]
        data.f_bsize = data.f_frsize = self._block_size
        data.f_blocks = -(-sum(known) // self._block_size)
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.namespace)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    @_errno_boundary
    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(_XATTR_PREFIX):
            # `ls -l` asks every file for its ACL and security label: no probe wait, no cache lookup for those.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        values = await self._xattrs(self._node(inode))
        if name not in values:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return values[name]

    @_errno_boundary
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(name) for name in await self._xattrs(self._node(inode))]

    def _statistics_json(self) -> bytes:
        statistics = self.engine.statistics()
        while True:
            encoded = json.dumps(statistics, sort_keys=True).encode()
            busiest = statistics.get("busiest_files")
            if len(encoded) <= _XATTR_SIZE_MAX or not isinstance(busiest, list) or not busiest:
                return encoded
            busiest.pop()

    async def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        if node is self.namespace.root:
            root = {STATS_XATTR: self._statistics_json()}
            if self.reload_status:
                root[RELOAD_XATTR] = json.dumps(self.reload_status, sort_keys=True).encode()
            return root
        if not isinstance(node, FileNode):
            return {}
        file = await self.engine.metadata(node.file_index)
        values = {b"url": file.url}
        if file.metadata is not None:
            values[b"etag"] = file.metadata.etag or ""
            values[b"last_modified"] = file.metadata.last_modified or ""
        if file.failure is not None:
            values[b"error"] = file.failure.cause
        values[b"cached_bytes"] = str(self.engine.cached_bytes(node.file_index))
        values[b"fetched_bytes"] = str(file.traffic.bytes_fetched)
        return {_XATTR_PREFIX + key: value.encode() for key, value in values.items()}
