"""How components see a config that is reloaded while they run: they ask a provider.

A provider is a callable returning the settings in use *now*
(:class:`daemon.config_watcher.ConfigHolder` is one for the whole config;
``lambda: holder.current.dispatch`` one for a section). A component that
must follow a hot reload keeps the provider and calls it each time it needs a
setting; nobody replaces its attributes from outside. A component that takes
a plain value (a test, a one-shot CLI command) gets :func:`provided` to wrap it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from daemon.config import ContourdConfig

T = TypeVar("T")

ConfigProvider = Callable[[], ContourdConfig]
"""Returns the whole config in use now."""


def provided(value: T | Callable[[], T]) -> Callable[[], T]:
    """``value`` itself when it is a provider, else a provider that always returns it."""
    if callable(value):
        return value
    return lambda: value
