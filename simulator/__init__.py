"""perpwatch venue simulator: one deterministic market served through each venue's API."""

from .market import Market, synthetic

__all__ = ["Market", "synthetic", "start"]


def start(*args, **kwargs):
    from .server import start as _start

    return _start(*args, **kwargs)
