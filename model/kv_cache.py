"""The key/value-cache argument of Hugging Face causal LMs across transformers 5.x.

transformers renamed the forward argument and output field ``past_key_values`` to ``cache`` during 5.x; the
old name is a deprecated alias that 5.40 removes. Every call in this project that passes or reads a cache goes
through these two helpers, so the same code runs on releases before and after the rename and on models
whose forward still takes the old name (a user's own LLM class).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

NEW, OLD = "cache", "past_key_values"


@functools.cache
def _cache_arg(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters  # follows functools.wraps (the deprecation wrapper)
    if NEW in params:
        return NEW
    if OLD in params:
        return OLD
    raise TypeError(f"{cls.__name__}.forward takes neither `{NEW}` nor `{OLD}`: it cannot continue from a KV cache")


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the name ``model.forward`` takes (``cache`` or, before the rename, ``past_key_values``)."""
    return {_cache_arg(type(model)): cache}


def output_cache(out: Any) -> Any:
    """The cache a forward returned (``out.cache``, or ``out.past_key_values`` before the rename), None if none."""
    value = getattr(out, NEW, None)
    return value if value is not None else getattr(out, OLD, None)


def output_field(output_cls: type) -> str:
    """The cache field name of a transformers output dataclass (``cache`` or ``past_key_values``)."""
    fields = getattr(output_cls, "__dataclass_fields__", {})
    return NEW if NEW in fields else OLD


__all__ = ["cache_kwargs", "output_cache", "output_field"]
