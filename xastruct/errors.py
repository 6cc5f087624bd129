"""Errors users see. Each names the offending file/row and says how to fix it."""

from __future__ import annotations


class XAStructError(Exception):
    """Base class; the CLI prints these without a traceback and exits non-zero."""


class InputError(XAStructError):
    """Bad input data: names the source (file, row) and the fix."""

    def __init__(self, source: str, problem: str, fix: str | None = None):
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        msg = f"{self.source}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)

    def __reduce__(self):
        # picklable across process pools / dask workers (the default reduce passes only the message)
        return (type(self), (self.source, self.problem, self.fix))


class StoreError(XAStructError):
    """Database / migration problems."""


class ReadOnlyError(XAStructError):
    """A write was attempted through a read-only connection."""


class RemoteError(XAStructError):
    """A remote service (Materials Project) is unreachable or refused us."""
