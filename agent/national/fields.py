"""Reading the national transactions' input: every problem collected with its full path, and the field
variants real HIS send accepted (numbers as text or JSON numbers, ``""`` for an absent optional field,
unknown extra fields ignored), while a malformed required field is still refused by name.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from protocol.records import decimal_text, to_fen

from ..errors import AgentError

__all__ = ["Fields", "NationalError"]


class NationalError(AgentError):
    """A transaction refused: ``infcode`` -1 with every problem as ``field: what is expected``.

    An ``AgentError`` so that, raised inside the outbox writer, it fails only its own write."""

    code = "national_refused"
    http_status = 200

    def __init__(self, problems: list[tuple[str, str]] | str) -> None:
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))


# ---- reading the input -----------------------------------------------------------------------


class Fields:
    """Reads one JSON object of a request, collecting every problem with its full path.

    Why not msgspec structs as in ``agent.intake``: the platform's HIS developers expect one message
    listing each field and what it should be; structs stop at the first problem."""

    def __init__(self, obj: Any, path: str, problems: list[tuple[str, str]] | None = None) -> None:
        self.path = path
        self.problems = problems if problems is not None else []
        if not isinstance(obj, dict):
            self.problems.append((path, "must be a JSON object"))
            obj = {}
        self.obj: dict[str, Any] = obj

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def add(self, name: str, message: str) -> None:
        self.problems.append((self.at(name), message))

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        pattern: str | None = None,
        hint: str = "",
        max_len: int = 64,
    ) -> str | None:
        value = self.obj.get(name)
        if isinstance(value, str):
            value = value.strip()  # HIS built on fixed-width tables pad codes with spaces
        if value is None or value == "":
            if required:
                self.add(name, f"required{': ' + hint if hint else ''}")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            value = str(int(value))  # a code sent as a JSON number (310.0 is still 310)
        if not isinstance(value, str):
            self.add(name, f"must be text{': ' + hint if hint else ''}")
            return None
        if len(value) > max_len:
            self.add(name, f"at most {max_len} characters")
            return None
        if pattern and not re.fullmatch(pattern, value):
            self.add(name, hint or f"must match {pattern}")
            return None
        return value

    def code(self, name: str, table: dict[str, str], *, required: bool = True) -> str | None:
        value = self.text(name, required=required, max_len=8)
        if value is not None and value not in table:
            choices = ", ".join(f"{k} {v}" for k, v in table.items())
            self.add(name, f"unknown code {value!r}; one of: {choices}")
            return None
        return value

    def _decimal(self, name: str, required: bool) -> Decimal | None:
        value = self.obj.get(name)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            if required:
                self.add(name, "required: a decimal number such as 12.30")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            self.add(name, "must be a decimal number (text or JSON number) such as 12.30")
            return None
        try:
            dec = Decimal(value) if not isinstance(value, Decimal) else value
        except InvalidOperation:
            self.add(name, f"{value!r} is not a decimal number such as 12.30")
            return None
        if not dec.is_finite():
            self.add(name, "must be a finite decimal number")
            return None
        return dec

    def money(self, name: str, *, required: bool = True) -> int | None:
        """An amount in yuan → integer fen (exact; more than 2 decimals is refused, never rounded)."""
        dec = self._decimal(name, required)
        if dec is None:
            return None
        try:
            return to_fen(dec)
        except ValueError:
            self.add(name, "an amount in yuan with at most 2 decimals, such as 12.30")
            return None

    def decimal(self, name: str, places: int, *, required: bool = True, positive: bool = False) -> str | None:
        dec = self._decimal(name, required)
        if dec is None:
            return None
        if positive and dec <= 0:
            self.add(name, "must be greater than 0")
            return None
        try:
            return decimal_text(dec, places)
        except ValueError:
            self.add(name, f"a decimal number with at most {places} decimals")
            return None

    def integer(self, name: str, *, required: bool = False, low: int = 0, high: int = 10**6) -> int | None:
        value = self.obj.get(name)
        if isinstance(value, str):
            value = value.strip()
        if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            value = int(value)
        if value is None or value == "":
            if required:
                self.add(name, f"required: a whole number {low}-{high}")
            return None
        try:
            number = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            self.add(name, f"a whole number {low}-{high}")
            return None
        return number

    def date_time(self, name: str, *, required: bool = True) -> str | None:
        """``yyyy-MM-dd HH:mm:ss`` (the platform's format; ISO-8601 with ``T`` or an offset accepted)."""
        value = self.text(name, required=required, max_len=40, hint="a time such as 2026-11-25 09:30:00")
        if value is None:
            return None
        try:
            datetime.fromisoformat(value)
        except ValueError:
            self.add(name, f"{value!r} is not a time such as 2026-11-25 09:30:00")
            return None
        return value

    def date(self, name: str, *, required: bool = True) -> str | None:
        value = self.text(name, required=required, max_len=10, hint="a date such as 2026-11-25")
        if value is None:
            return None
        try:
            return datetime.strptime(value, "%Y-%m-%d").date().isoformat()
        except ValueError:
            self.add(name, f"{value!r} is not a date such as 2026-11-25")
            return None

    def child(self, name: str, *, required: bool = True) -> Fields | None:
        value = self.obj.get(name)
        if value is None or (value == "" and not required):
            if required:
                self.add(name, "required: a JSON object")
            return None
        return Fields(value, self.at(name), self.problems)

    def items(self, name: str, *, required: bool = True, max_items: int = 2000) -> list[Fields]:
        value = self.obj.get(name)
        if value is None or value == [] or value == "":
            if required:
                self.add(name, "required: a non-empty JSON array")
            return []
        if not isinstance(value, list):
            self.add(name, "must be a JSON array")
            return []
        if len(value) > max_items:
            self.add(name, f"at most {max_items} items")
            return []
        return [Fields(v, f"{self.at(name)}[{i}]", self.problems) for i, v in enumerate(value)]

    def check(self) -> None:
        if self.problems:
            raise NationalError(self.problems)
