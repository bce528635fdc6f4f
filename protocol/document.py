"""Walking an operator's document and collecting every problem with its path.

One set of conventions for every document operators publish (rules, catalogue, policy, keys),
checked by the same code when the centre publishes and when an agent applies: unknown fields are
refused, money is integer fen, a number with a fraction is refused (decimal values are strings),
codes are strings. A JSON number with a fraction arrives as ``float`` (plain ``json.loads``), as
``Decimal``, or as the centre's marker object with a ``text`` attribute; all are named as such.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

AREA = re.compile(r"^[0-9]{6}$")
MED_TYPE = re.compile(r"^[0-9]{2,4}$")
INSUTYPE = re.compile(r"^[0-9]{3}$")
HOSP_LEVELS = ("0", "1", "2", "3")
#: ICD-10 code prefix: a chapter letter, then optionally 1-2 digits, a dot and up to 10 more
#: characters (the national extension uses lower-case ``x``: ``I10.x00``).
DISE_PREFIX = re.compile(r"^[A-Z]([0-9]{1,2}(\.[0-9A-Za-z]{0,10})?)?$")
_DECIMAL = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,4})?$")


def fraction(value: Any) -> str | None:
    """The text of a number with a fraction; None for anything else."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return str(value)
    text = getattr(value, "text", None)
    if isinstance(text, str) and not isinstance(value, str | int | list | dict | bool):
        return text
    return None


def kind(value: Any) -> str:
    if fraction(value) is not None:
        return "a number with a fraction"
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "an integer"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def summary(what: str, problems: list[str]) -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return f"{what} has {len(problems)} problem(s): {shown}"


class Checker:
    """Collects ``"path: message"`` problems while walking a document."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def obj(self, value: Any, path: str, required: set[str], optional: set[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"must be an object, found {kind(value)}")
            return None
        for name in sorted(required - value.keys()):
            self.add(join(path, name), "is required")
        for name in sorted(value.keys() - required - optional, key=str):
            self.add(join(path, str(name)), "is not a known field")
        return value

    def text(
        self,
        value: Any,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] | None = None,
        max_len: int = 200,
        hint: str = "",
    ) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"must be a string, found {kind(value)}")
        elif choices is not None and value not in choices:
            self.add(path, f"{value!r} is not one of {', '.join(choices)}")
        elif pattern is not None and not pattern.match(value):
            self.add(path, f"{value!r} {hint}")
        elif pattern is None and choices is None and not 1 <= len(value) <= max_len:
            self.add(path, f"must be 1-{max_len} characters")
        else:
            return value
        return None

    def integer(self, value: Any, path: str, lo: int, hi: int, unit: str = "") -> int | None:
        text = fraction(value)
        if text is not None:
            self.add(path, f"{text} has a fraction; write an integer{unit}")
        elif not isinstance(value, int) or isinstance(value, bool):
            self.add(path, f"must be an integer{unit}, found {kind(value)}")
        elif not lo <= value <= hi:
            self.add(path, f"{value} is outside {lo}-{hi}")
        else:
            return value
        return None

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.add(path, f"must be true or false, found {kind(value)}")
            return None
        return value

    def quantity(self, value: Any, path: str) -> Decimal | None:
        """A positive quantity: an integer or a decimal string with at most 4 decimals ("0.5")."""
        text = fraction(value)
        if text is not None:
            self.add(path, f'quantities with a fraction are decimal strings: write "{text}"')
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _DECIMAL.match(value):
            self.add(path, 'must be a positive integer or a decimal string with at most 4 decimals ("0.5")')
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
            number = Decimal(0)
        if number <= 0:
            self.add(path, f"{value} must be more than 0")
            return None
        return number

    def listing(self, value: Any, path: str, max_len: int) -> list[Any]:
        if not isinstance(value, list):
            self.add(path, f"must be a list, found {kind(value)}")
            return []
        if len(value) > max_len:
            self.add(path, f"holds {len(value)} entries; at most {max_len}")
            return []
        return value

    def codes(
        self, value: Any, path: str, *, pattern: re.Pattern[str], hint: str, max_len: int = 100
    ) -> tuple[str, ...]:
        """A list of distinct code strings, each matching ``pattern``."""
        found: list[str] = []
        for i, code in enumerate(self.listing(value, path, max_len)):
            checked = self.text(code, join(path, i), pattern=pattern, hint=hint)
            if checked is None:
                continue
            if checked in found:
                self.add(join(path, i), f"{checked!r} is listed twice")
            else:
                found.append(checked)
        return tuple(found)

    def choices(self, value: Any, path: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        found: list[str] = []
        for i, item in enumerate(self.listing(value, path, len(allowed) * 2)):
            checked = self.text(item, join(path, i), choices=allowed)
            if checked is None:
                continue
            if checked in found:
                self.add(join(path, i), f"{checked!r} is listed twice")
            else:
                found.append(checked)
        return tuple(found)
