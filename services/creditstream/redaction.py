"""The one redactor: credentials out of any text before it is logged or printed.

Two layers, because no single rule sees every form a secret takes:
- **patterns**: the user-info of every `scheme://user:password@host` (up to the *last* `@` of
  the token, so a raw `/` or `@` in a password is covered; an empty user and a user-only URL,
  which may be a token, too) and `password=…`-style pairs (query strings, libpq key/value);
- **literals**: the actual secret values this process was configured with (passwords and
  secret-looking query values of every `CREDITSTREAM_*` URL, raw and %-decoded), replaced
  wherever they appear: in exception messages that quote a fragment of a URL, in repr()s, ...
"""

from __future__ import annotations

import logging
import os
import re
import traceback
import urllib.parse
from collections.abc import Iterable, Mapping

MASK = "***"
# NOTE: a literal this short would mask ordinary words; such passwords are still covered by
# the patterns wherever they appear inside a URL.
_MIN_LITERAL = 4

_URL_DELIMITERS = re.compile(r"[/@:?#]")
# scheme:// then the rest of the token (no whitespace). The user-info ends at the token's last
# `@`: URL parsers split at the first `/`, which leaves a raw `/` in a password exposed.
# A comma followed by another scheme:// ends the token too: a comma-separated URL list
# (CREDITSTREAM_AMQP_URL for a cluster) is one URL per node, each with its own credentials.
_URL = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<rest>(?:(?!,\s*[a-z][a-z0-9+.-]*://)\S)+)",
    re.IGNORECASE,
)
_SECRET_KEYS = r"password|passwd|pwd|pass|secret|token|api[_-]?key|access[_-]?key|sslpassword"
_SECRET_PAIR = re.compile(
    rf"(?P<key>(?<![A-Za-z0-9_])(?:{_SECRET_KEYS})\s*=\s*)(?P<value>[^&\s;,'\"]+)", re.IGNORECASE
)

# A variable whose name says it holds a secret: CREDITSTREAM_X_PASSWORD, CREDITSTREAM_API_TOKEN...
_SECRET_NAME = re.compile(rf"(?:^|_)(?:{_SECRET_KEYS})(?:_|$)", re.IGNORECASE)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, rest = match.group("scheme"), match.group("rest")
    at = rest.rfind("@")
    if at < 0:
        return match.group(0)
    userinfo, host_and_path = rest[:at], rest[at + 1 :]
    user, colon, _password = userinfo.partition(":")
    # NOTE: keep the user name for diagnostics unless it may itself be the secret (no password
    # given: token-style URLs) or the split is ambiguous (a `/` before the colon).
    shown = f"{user}:{MASK}" if colon and user and "/" not in user else MASK
    if colon and not user:
        shown = f":{MASK}"
    return f"{scheme}{shown}@{host_and_path}"


class Redactor:
    """Masks URL credentials, secret key=value pairs and the literal secrets it was given."""

    def __init__(self, literals: Iterable[str] = ()) -> None:
        self._literals: set[str] = set()
        self.add(literals)

    def add(self, literals: Iterable[str]) -> None:
        """Also mask these values: %-encoded and %-decoded forms, and the pieces between URL
        delimiters (a parser that split the URL at a raw `/` or `@` may quote just a piece)."""
        for value in literals:
            decoded = urllib.parse.unquote(value)
            forms = {
                value,
                decoded,
                urllib.parse.quote(decoded, safe=""),
                urllib.parse.quote_plus(decoded, safe=""),
                *_URL_DELIMITERS.split(decoded),
            }
            self._literals.update(form for form in forms if len(form) >= _MIN_LITERAL)

    def __call__(self, text: str) -> str:
        """`text` with every credential replaced by `***`."""
        text = _URL.sub(_mask_userinfo, text)
        text = _SECRET_PAIR.sub(lambda m: m.group("key") + MASK, text)
        # NOTE: longest first, so a value containing another is masked whole.
        for literal in sorted(self._literals, key=len, reverse=True):
            if literal in text:
                text = text.replace(literal, MASK)
        return text


def redact(text: str) -> str:
    """Pattern-only redaction (no literal secrets known): for texts built before settings."""
    return Redactor()(text)


def secrets_in_url(url: str) -> list[str]:
    """The password (or user-only token) and secret query values of one URL-like string."""
    found: list[str] = []
    for match in _URL.finditer(url):
        rest = match.group("rest")
        at = rest.rfind("@")
        if at >= 0:
            user, colon, password = rest[:at].partition(":")
            found.append(password if colon else user)
    found += [m.group("value") for m in _SECRET_PAIR.finditer(url)]
    return [value for value in found if value]


def secrets_in_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secrets carried by `CREDITSTREAM_*` variables (read raw: valid settings or not)."""
    environ = os.environ if environ is None else environ
    found: list[str] = []
    for name, value in environ.items():
        if not name.startswith("CREDITSTREAM_"):
            continue
        if _SECRET_NAME.search(name.removeprefix("CREDITSTREAM_")):
            found.append(value)
        found += secrets_in_url(value)
    return found


class RedactingFilter(logging.Filter):
    """Scrub credentials from every record (message and traceback), whatever library logged it.

    NOTE: the traceback is rendered here and the exception info dropped, so no formatter or
    handler (JSON, rich) can render the unredacted exception message again.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            rendered = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = self.redactor(rendered)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True
