"""User-facing errors.

A `HelixflowError` is a user mistake or an environment problem that the CLI prints as
one clear line (plus a hint) without a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


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
