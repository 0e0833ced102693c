"""Near-duplicate images: connected components of "64-bit hashes within d bits"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Groups with more members than this list no pairwise distances (they would be n^2).
MAX_GROUP_PAIRS = 16


@dataclass(frozen=True, slots=True)
class HashedImage:
    artifact_id: str
    name: str
    hash: int  # 64 bits


# Set bits of every byte value, to count differing bits of many hashes at once.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def distances(hashes: npt.NDArray[np.uint64], one: np.uint64) -> npt.NDArray[np.int64]:
    xor = np.bitwise_xor(hashes, one)
    counts = _POPCOUNT[xor.view(np.uint8).reshape(-1, 8)].sum(axis=1, dtype=np.int64)
    return np.asarray(counts, np.int64)


def group_duplicates(nodes: Sequence[HashedImage], max_distance: int) -> list[dict[str, Any]]:
    """Connected components of "hashes within max_distance bits", of two members or more.

    Each group lists its sorted artifact IDs and names; pairs with their distances when it
    has at most MAX_GROUP_PAIRS members, and always its largest pairwise distance.
    """
    count = len(nodes)
    hashes = np.array([node.hash for node in nodes], np.uint64)
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(count - 1):
        close = np.nonzero(distances(hashes[i + 1 :], hashes[i]) <= max_distance)[0]
        for j in close:
            a, b = root(i), root(i + 1 + int(j))
            if a != b:
                parent[b] = a
    members: dict[int, list[int]] = {}
    for i in range(count):
        members.setdefault(root(i), []).append(i)

    groups: list[dict[str, Any]] = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        ordered = sorted(indices, key=lambda i: nodes[i].artifact_id)
        diameter = 0
        pairs: list[dict[str, Any]] = []
        for position, i in enumerate(ordered):
            rest = ordered[position + 1 :]
            if not rest:
                continue
            found = distances(hashes[rest], hashes[i])
            diameter = max(diameter, int(found.max()))
            if len(ordered) <= MAX_GROUP_PAIRS:
                pairs += [
                    {"a": nodes[i].artifact_id, "b": nodes[j].artifact_id, "distance": int(d)}
                    for j, d in zip(rest, found, strict=True)
                ]
        groups.append(
            {
                "artifact_ids": [nodes[i].artifact_id for i in ordered],
                "names": [nodes[i].name for i in ordered],
                "max_distance": diameter,
                "pairs": pairs if len(ordered) <= MAX_GROUP_PAIRS else None,
            }
        )
    groups.sort(key=lambda g: g["artifact_ids"][0])
    return groups
