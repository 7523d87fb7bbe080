"""`Secret`: a value, such as a password, that must never be printed."""

from __future__ import annotations


class Secret:
    """Hold a secret so that repr(), str() and f-strings show a mask.

    Passwords travel through objects that end up in logs, tracebacks
    (pytest's ``--showlocals``) and reprs; wrapping them means a careless
    ``%r`` shows ``Secret('***')`` instead.  Call `reveal()` at the single
    place the real value is needed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Secret is not pickled, so it cannot leak through a pickle")
