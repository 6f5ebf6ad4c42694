"""User-facing errors.

A `HelixflowError` is a user mistake or an environment problem that the CLI prints as
one clear line (plus a hint) without a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from os import PathLike


class HelixflowError(Exception):
    """An error the user can fix; `hint` says how."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Survive pickling across Ray workers and Prefect's result store.
        return (_rebuild, (type(self), self.__dict__.copy()))


class InputError(HelixflowError):
    """Malformed or missing input, located by file and (1-based) record number.

    Example:
        >>> str(InputError("R1.fq.gz", "quality length 99 != sequence length 100", record=7))
        'R1.fq.gz: record 7: quality length 99 != sequence length 100'
    """

    def __init__(
        self, path: str, message: str, *, record: int | None = None, hint: str | None = None
    ) -> None:
        where = f"{path}: record {record}" if record is not None else str(path)
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = str(path)
        self.record = record
        self.detail = message


def _rebuild(cls: type[HelixflowError], state: dict[str, object]) -> HelixflowError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


@contextmanager
def naming_sources(local_to_uri: Mapping[str | PathLike[str], str]) -> Iterator[None]:
    """Errors raised about local copies (scratch files) name the user's URIs instead.

    Example:
        >>> with naming_sources({"/tmp/x/reference.fa": "s3://refs/hg.fa"}):  # doctest: +SKIP
        ...     read_fasta(Path("/tmp/x/reference.fa"))
        InputError: s3://refs/hg.fa: reference FASTA holds no sequence
    """
    try:
        yield
    except HelixflowError as exc:
        pairs = [(str(local), uri) for local, uri in local_to_uri.items() if str(local) != uri]
        for attr in ("message", "path"):
            text = getattr(exc, attr, None)
            if isinstance(text, str):
                for local, uri in pairs:
                    text = text.replace(local, uri)
                setattr(exc, attr, text)
        exc.args = (exc.message,)
        raise


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling (`__cause__`, else an
    unsuppressed `__context__`; a Ray `RayTaskError`'s `cause`), outermost first.

    Example:
        >>> try:
        ...     try:
        ...         raise ConnectionResetError("reset")
        ...     except ConnectionResetError as inner:
        ...         raise OSError("read failed") from inner
        ... except OSError as outer:
        ...     [type(e).__name__ for e in exception_chain(outer)]
        ['OSError', 'ConnectionResetError']
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        ray_exceptions = sys.modules.get("ray.exceptions")  # no Ray error exists without it
        if ray_exceptions is not None and isinstance(current, ray_exceptions.RayTaskError):
            current = current.cause  # the exception the remote code raised
        elif current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__


class TooLittleInput(HelixflowError):
    """Valid input too small for a kernel (e.g. reads shorter than k, fewer points than
    neighbours): its task returns a `helixflow.artifacts.Skipped` instead of failing."""
