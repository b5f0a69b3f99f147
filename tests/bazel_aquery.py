"""Read `bazel aquery --output=jsonproto`: the actions, their outputs' paths and their keys.

Shared by tests/test_bazel.py (the hermeticity test compares action keys) and
benchmarks/bench_bazel.py (which counts actions). Bazel 4 writes paths as a tree of
fragments (id, label, parentId) that artifacts point into.
"""

from __future__ import annotations

import json


def aquery_actions(jsonproto: str) -> list[tuple[str, list[str], str]]:
    """(mnemonic, exec paths of its outputs, action key) of each action, in aquery's order."""
    d = json.loads(jsonproto)
    frags = {f["id"]: f for f in d.get("pathFragments", [])}

    def path(fid: int) -> str:
        parts = []
        while fid:
            f = frags[fid]
            parts.append(f["label"])
            fid = f.get("parentId", 0)
        return "/".join(reversed(parts))

    arts = {a["id"]: path(a["pathFragmentId"]) for a in d.get("artifacts", [])}
    return [(a["mnemonic"], [arts[o] for o in a["outputIds"]], a.get("actionKey", "")) for a in d.get("actions", [])]
