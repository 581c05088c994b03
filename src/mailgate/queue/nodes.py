"""The nodes that share one queue: their names, heart-beats, and the leases they hold.

Every lease owner a node writes begins with `node_owner(node)`, so one prefix names all
the leases of one node, whatever its processes and threads (interchange/worker.py
builds the rest). A node that starts gives back only its own leases: in a shared store
the others' belong to live nodes.
"""

from __future__ import annotations


def node_owner(node: str) -> str:
    """The prefix of the lease owners of every thread of `node`, in every process."""
    return f"{node}:"
