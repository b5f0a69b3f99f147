"""Which file in view would provide a library name, and which distribution ships it.

`why` uses this to turn "not found" into "nvidia-cuda-runtime ships it, but it is not
on the search path": the answer a user needs to fix the layout.
"""

from __future__ import annotations

import os

from rpathfix.static import NamedTuple


class Provider(NamedTuple):
    path: str
    dist: str | None
    version: str | None


def default_view(file: str) -> list[str]:
    """The directories around `file`: its site-packages, and in a split layout
    (<top>/<dist>/site-packages/...) every sibling root's site-packages too."""
    d = os.path.dirname(file)
    while d != os.path.dirname(d):
        if os.path.basename(d) == "site-packages":
            top = os.path.dirname(os.path.dirname(d))
            siblings = sorted(os.path.join(top, n, "site-packages") for n in os.listdir(top))
            return [s for s in siblings if os.path.isdir(s)] or [d]
        d = os.path.dirname(d)
    return [os.path.dirname(os.path.dirname(file))]


def find_providers(view: list[str], name: str, limit: int = 200_000) -> list[Provider]:
    """Files named `name` under the view directories (bounded walk), with their distribution."""
    from rpathfix.scan import DistIndex

    out: list[Provider] = []
    budget = limit
    for top in view:
        index = DistIndex(top)
        for d, dirs, files in os.walk(top):
            dirs.sort()
            infos = [x for x in dirs if x.endswith(".dist-info")]
            if infos:
                index.add_site_dir(d, infos)
            budget -= len(files) + len(dirs)
            if budget < 0:
                return out
            if name in files:
                p = os.path.join(d, name)
                dist = index.lookup(p)
                out.append(Provider(p, dist[0] if dist else None, dist[1] if dist else None))
    return out
