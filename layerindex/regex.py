"""Regular expressions a user gives (``find --regex``, globs, an image list's ``repo:/regex/``
lines), run over names strangers chose: tar paths, registry tags.

They are compiled by RE2, whose matching time is linear in the text whatever the pattern:
Python's ``re`` backtracks, and ``(a+)+$`` over a name of 30 a's and a b takes minutes (a glob
``/d/**a**a…**z`` as ``.*`` runs too). RE2's syntax is Python's without backreferences and
look-around (https://github.com/google/re2/wiki/Syntax), and it counts repetitions to 1000.
"""

from __future__ import annotations

import re
from typing import Protocol

import re2  # type: ignore[import-untyped]

from layerindex.errors import UsageError

MAX_REPEAT = 1000  # RE2's limit on x{n,m}
# A repetition RE2 would take as literal text, its count being too long to read as a number
# (Python's re raises OverflowError on it): refused instead of matched as "{99999999999}".
_HUGE_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would write its own copy of the error on stderr


class Regex(Protocol):
    """A compiled pattern: ``search`` and ``fullmatch`` as in ``re``, a match or None."""

    def search(self, text: str) -> object | None: ...

    def fullmatch(self, text: str) -> object | None: ...


def compile_regex(pattern: str, what: str) -> Regex:
    """``pattern`` compiled by RE2; a UsageError naming ``what`` (e.g. ``--regex '(a'``) when
    RE2 does not take it."""
    for match in _HUGE_REPEAT.finditer(pattern):
        # By length first: int() of a 5,000-digit count raises ValueError.
        if any(len(n.lstrip("0")) > 4 or int(n) > MAX_REPEAT for n in match.groups() if n):
            raise UsageError(
                f"{what}: the repetition {match[0]} counts past {MAX_REPEAT}, the most RE2 "
                "matches; use a smaller count or +"
            )
    try:
        return re2.compile(pattern, _OPTIONS)  # type: ignore[no-any-return]
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args else "malformed"
    except UnicodeEncodeError:
        reason = "it holds bytes that are not UTF-8"
    raise UsageError(
        f"{what} is not a valid regular expression: {reason} (RE2 syntax: no backreferences "
        "or look-around, so that matching stays linear in the name)"
    )
