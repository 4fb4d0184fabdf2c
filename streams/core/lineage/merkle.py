"""The Merkle tree hash of RFC 6962 (Certificate Transparency), over byte strings.

An audit checkpoint summarises every chain head of a partition in one root
(:mod:`streams.core.lineage.anchor`). The tree is RFC 6962's, section 2.1:

* a leaf hashes as ``SHA-256(0x00 || leaf)``, an inner node as
  ``SHA-256(0x01 || left || right)``. The two prefixes are the domain separation: no
  node hash can be passed off as a leaf hash or the reverse, so nobody can present the
  two children of a node as a "leaf" and make a different list of heads with the same
  root (the second-preimage attack on plain Merkle trees);
* the tree of ``n > 1`` leaves splits at ``k``, the largest power of two below ``n``:
  left the first ``k`` leaves, right the rest. The empty tree's hash is ``SHA-256("")``.

:func:`merkle_root` builds the same tree bottom-up, pairing neighbours level by level
and carrying an odd last node up unchanged; this is equal to the recursive definition
(tested against it), with no recursion and one pass per level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["EMPTY_ROOT", "leaf_hash", "merkle_root", "node_hash"]

_LEAF = b"\x00"
_NODE = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
"""The root of a tree without leaves (RFC 6962: the hash of the empty string)."""


def leaf_hash(leaf: bytes) -> bytes:
    """Returns the RFC 6962 hash of one leaf: SHA-256 of ``0x00`` then the leaf."""
    return hashlib.sha256(_LEAF + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Returns the RFC 6962 hash of an inner node: SHA-256 of ``0x01``, left, right."""
    return hashlib.sha256(_NODE + left + right).digest()


def merkle_root(leaves: Iterable[bytes]) -> str:
    """Returns the hex Merkle tree hash of ``leaves``, in the order given.

    Args:
        leaves: the leaf byte strings (the caller fixes their order: a different
            order is a different tree).
    """
    level = [leaf_hash(leaf) for leaf in leaves]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])  # an odd last node moves up as it is
        level = paired
    return level[0].hex()
