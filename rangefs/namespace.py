"""The directory tree the urls file describes: paths, inode numbers, parents and children.

Static for the life of a mount: inode numbers are assigned once, in urls-file order, so they are stable and
forget() needs no bookkeeping. Knows nothing of HTTP or FUSE.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from rangefs.config import Entry

ROOT_INODE = 1


@dataclass(eq=False)
class Node:
    inode: int
    name: str
    parent: DirectoryNode | None


@dataclass(eq=False)
class DirectoryNode(Node):
    children: dict[str, Node] = field(default_factory=dict)

    def sorted_children(self) -> list[Node]:
        return [self.children[name] for name in sorted(self.children)]


@dataclass(eq=False)
class FileNode(Node):
    entry: Entry
    file_index: int  # position of the entry in the urls file: the engine's handle on the remote file


class Namespace:
    """Inode-addressed tree built from urls-file entries."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.root = DirectoryNode(ROOT_INODE, "", None)
        self._by_inode: dict[int, Node] = {ROOT_INODE: self.root}
        for file_index, entry in enumerate(entries):
            directory = self.root
            for part in entry.path.parts[:-1]:
                child = directory.children.get(part)
                if child is None:
                    child = self._add(DirectoryNode(self._next_inode(), part, directory))
                if not isinstance(child, DirectoryNode):
                    raise TypeError(f"{entry.path}: {part} is a file")  # the parser rejects this layout
                directory = child
            self._add(FileNode(self._next_inode(), entry.path.name, directory, entry, file_index))

    def _next_inode(self) -> int:
        return len(self._by_inode) + ROOT_INODE

    def _add(self, node: Node) -> Node:
        assert node.parent is not None
        node.parent.children[node.name] = node
        self._by_inode[node.inode] = node
        return node

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def lookup(self, parent_inode: int, name: str) -> Node | None:
        parent = self._by_inode.get(parent_inode)
        if not isinstance(parent, DirectoryNode):
            return None
        if name == ".":
            return parent
        if name == "..":
            return parent.parent or parent
        return parent.children.get(name)

    def files(self) -> Iterator[FileNode]:
        return (node for node in self._by_inode.values() if isinstance(node, FileNode))

    def __len__(self) -> int:
        return len(self._by_inode)
