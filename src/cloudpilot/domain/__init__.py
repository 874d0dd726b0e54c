"""Plain data types and their rules. No I/O.

This package's ``__init__`` stays empty on purpose: the pilot (standard library only) imports
``cloudpilot.domain.shutdown`` and must not pull pydantic in through here.
"""
