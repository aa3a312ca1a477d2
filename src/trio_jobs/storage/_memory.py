"""Placeholder: the owner of this store replaces this file."""


class MemoryStorage:
    """Placeholder."""
