"""The directory tree the urls file describes: paths, inode numbers, parents and children.

Inode numbers are never reused: a file keeps its number for as long as its entry stays the same across
reloads (``update``), and an entry that is new or changed (another URL, headers or command for the same
path) gets a new number, so the kernel can never mix up the pages or attributes of the two. A removed file
stays reachable by its number (``get``) until ``forget``: its open handles still need its attributes.
Knows nothing of HTTP or FUSE.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from rangefs.config import Entry

ROOT_INODE = 1


@dataclass(eq=False)
class Node:
    inode: int
    name: str
    parent: DirectoryNode | None


@dataclass(eq=False)
class DirectoryNode(Node):
    """``children`` changes only through ``add_child`` and ``remove_child``, which drop the sorted list kept for
    readdir (it asks once per ~25 entries: sorting 100,000 names at each call made `ls` of such a directory
    quadratic)."""

    children: dict[str, Node] = field(default_factory=dict)
    _sorted: list[Node] | None = field(default=None, repr=False)

    def sorted_children(self) -> Sequence[Node]:
        if self._sorted is None:
            self._sorted = [self.children[name] for name in sorted(self.children)]
        return self._sorted

    def add_child(self, node: Node) -> None:
        self.children[node.name] = node
        self._sorted = None

    def remove_child(self, name: str) -> None:
        del self.children[name]
        self._sorted = None


@dataclass(eq=False)
class FileNode(Node):
    entry: Entry
    file_index: int  # the engine's handle on the remote file


@dataclass
class TreeChange:
    """What an ``update`` did, for telling the kernel: each (directory inode, name) whose entry appeared,
    went or now names another inode, and the nodes removed and added."""

    names: list[tuple[int, str]] = field(default_factory=list)
    removed: list[FileNode] = field(default_factory=list)
    added: list[FileNode] = field(default_factory=list)


class Namespace:
    """Inode-addressed tree built from urls-file entries.

    ``_by_inode`` holds every node of the tree; ``_detached`` the removed files not yet forgotten (they are
    in no directory). ``_last_inode`` only grows."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.root = DirectoryNode(ROOT_INODE, "", None)
        self._by_inode: dict[int, Node] = {ROOT_INODE: self.root}
        self._detached: dict[int, FileNode] = {}
        self._last_inode = ROOT_INODE
        for file_index, entry in enumerate(entries):
            self._add_file(entry, file_index)

    def update(self, files: Sequence[tuple[Entry, int]]) -> TreeChange:
        """Make the tree hold exactly ``files`` (entry, engine index): a file already here under the same
        path and index keeps its node and inode; the rest are removed or added, directories with them."""
        change = TreeChange()
        wanted = {entry.path: index for entry, index in files}
        for node in list(self.files()):
            if wanted.get(node.entry.path) != node.file_index:
                self._remove(node, change)
                self._detached[node.inode] = node
                change.removed.append(node)
        needed = {parent for path in wanted for parent in path.parents}
        self._prune_directories(self.root, PurePosixPath(), needed, change)
        for entry, index in files:
            if self.lookup_path(entry.path) is None:
                node = self._add_file(entry, index)
                change.added.append(node)
                change.names.append((self._parent_inode(node), node.name))
        return change

    def forget(self, inode: int) -> None:
        """A removed file is no longer open anywhere: drop it."""
        self._detached.pop(inode, None)

    def _add_file(self, entry: Entry, file_index: int) -> FileNode:
        directory = self.root
        for part in entry.path.parts[:-1]:
            child = directory.children.get(part)
            if child is None:
                child = self._add(DirectoryNode(self._next_inode(), part, directory))
            if not isinstance(child, DirectoryNode):
                raise TypeError(f"{entry.path}: {part} is a file")  # the parser rejects this layout
            directory = child
        node = FileNode(self._next_inode(), entry.path.name, directory, entry, file_index)
        self._add(node)
        return node

    def _remove(self, node: Node, change: TreeChange) -> None:
        assert node.parent is not None
        node.parent.remove_child(node.name)
        del self._by_inode[node.inode]
        change.names.append((node.parent.inode, node.name))

    def _prune_directories(
        self, directory: DirectoryNode, path: PurePosixPath, needed: set[PurePosixPath], change: TreeChange
    ) -> None:
        for child in list(directory.children.values()):
            if isinstance(child, DirectoryNode):
                child_path = path / child.name
                self._prune_directories(child, child_path, needed, change)
                if child_path not in needed:
                    self._remove(child, change)

    def _parent_inode(self, node: Node) -> int:
        assert node.parent is not None
        return node.parent.inode

    def _next_inode(self) -> int:
        self._last_inode += 1
        return self._last_inode

    def _add(self, node: Node) -> Node:
        assert node.parent is not None
        node.parent.add_child(node)
        self._by_inode[node.inode] = node
        return node

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode) or self._detached.get(inode)

    def lookup(self, parent_inode: int, name: str) -> Node | None:
        parent = self._by_inode.get(parent_inode)
        if not isinstance(parent, DirectoryNode):
            return None
        if name == ".":
            return parent
        if name == "..":
            return parent.parent or parent
        return parent.children.get(name)

    def lookup_path(self, path: PurePosixPath) -> Node | None:
        node: Node | None = self.root
        for part in path.parts:
            node = node.children.get(part) if isinstance(node, DirectoryNode) else None
        return node

    def files(self) -> Iterator[FileNode]:
        return (node for node in self._by_inode.values() if isinstance(node, FileNode))

    def __len__(self) -> int:
        return len(self._by_inode)
