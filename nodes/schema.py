"""One schema builder for every node: our category, and fields of newer hosts only where
the host has them (``io.Schema`` of 0.3.x raises TypeError on fields it lacks, such as
``search_aliases``)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from comfy_api.latest import io

CATEGORY = "LayerFusion"


@functools.cache
def _schema_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(io.Schema))


def layerfusion_schema(*, search_aliases: tuple[str, ...] = (), **fields: Any) -> io.Schema:
    """``io.Schema`` in the LayerFusion category; ``search_aliases`` (more words the node
    search finds it by) are passed where the host knows them."""
    fields.setdefault("category", CATEGORY)
    if search_aliases and "search_aliases" in _schema_fields():
        fields["search_aliases"] = list(search_aliases)
    return io.Schema(**fields)
