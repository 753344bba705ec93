"""One home for hiding secrets in URLs: Optuna storage URLs and MLflow tracking URIs.

Every URL that reaches a log, a terminal, an MLflow tag or param, or the study record in
Optuna goes through :func:`redact` first. It handles what SQLAlchemy, libpq and HTTP
accept, without parsing the URL the way any one of them does, so it never shows less than
it must:

- ``scheme://user:password@host``: the password becomes ``***``. The user part ends at the
  *last* ``@`` of the authority (``mysql://u:p@ss@h`` -> ``mysql://u:***@h``), and the
  password may hold ``:``, ``/``, ``?`` or percent escapes.
- ``http(s)://token@host``: a user part alone is a token for HTTP, hidden whole.
- query parameters whose name says secret (``password``, ``sslpassword``, ``passwd``,
  ``pwd``, ``token``, ``secret``, ``api_key``, ...) keep their name and lose their value.

:func:`secrets` names what was hidden, so :func:`scrub` can take the same secrets out of
any text (an error message quoting the URL, say).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
SECRET_KEY = re.compile(r"pass|pwd|secret|token|api[_-]?key|access[_-]?key|credential", re.IGNORECASE)
_TOKEN_SCHEMES = ("http", "https", "databricks")


def _parts(url: str) -> tuple[str, str, str] | None:
    """``(scheme + '://', userinfo, rest)`` of a URL with a user part, else None."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    first = rest.find("@")
    if first < 0:
        return None
    ends = [i for i in (rest.find(c, first) for c in "/?#") if i >= 0]
    at = rest.rfind("@", 0, min(ends) if ends else len(rest))
    userinfo = rest[:at]
    user = userinfo.split(":", 1)[0]
    if "/" in user:  # a path holding '@' (sqlite:////home/me@corp/x.db), not a user
        return None
    return scheme + sep, userinfo, rest[at + 1:]


def _split_query(rest: str) -> tuple[str, str, str]:
    """``(before '?', query, '#fragment')`` of the part after the user info."""
    start = rest.find("?")
    if start < 0:
        return rest, "", ""
    head, query = rest[:start], rest[start + 1:]
    query, hash_, fragment = query.partition("#")
    return head, query, hash_ + fragment


def _secret_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for item in re.split(r"[&;]", query):
        key, eq, value = item.partition("=")
        if eq and SECRET_KEY.search(unquote(key)):
            pairs.append((key, value))
    return pairs


def redact(url: str) -> str:
    """``url`` with its password, token and secret query values shown as ``***``."""
    url = str(url)
    prefix, rest = "", url
    parts = _parts(url)
    if parts is not None:
        scheme, userinfo, rest = parts
        user, colon, _ = userinfo.partition(":")
        if colon:
            prefix = f"{scheme}{user}:{MASK}@"
        elif scheme.removesuffix("://").lower() in _TOKEN_SCHEMES and userinfo:
            prefix = f"{scheme}{MASK}@"
        else:
            prefix = f"{scheme}{userinfo}@"
    head, query, fragment = _split_query(rest)
    if not query:
        return prefix + rest
    hidden = dict(_secret_pairs(query))
    items = []
    for item in re.split(r"([&;])", query):
        key, eq, value = item.partition("=")
        items.append(f"{key}={MASK}" if eq and key in hidden and value != MASK else item)
    return f"{prefix}{head}?{''.join(items)}{fragment}"


def secrets(url: str) -> list[str]:
    """The secret strings of ``url`` (as written and percent-decoded), longest first."""
    url = str(url)
    found: list[str] = []
    parts = _parts(url)
    rest = url
    if parts is not None:
        scheme, userinfo, rest = parts
        user, colon, password = userinfo.partition(":")
        if colon:
            found.append(password)
        elif scheme.removesuffix("://").lower() in _TOKEN_SCHEMES:
            found.append(userinfo)
    _, query, _ = _split_query(rest)
    found.extend(value for _, value in _secret_pairs(query))
    every = {s for value in found for s in (value, unquote(value)) if s and s != MASK}
    return sorted(every, key=len, reverse=True)


def has_hidden_secret(url: str | None) -> bool:
    """Whether ``url`` is a redacted one, unusable until its secret is given back."""
    return bool(url) and redact(str(url)) == str(url) and MASK in str(url)


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with every secret of ``urls`` replaced by ``***`` (e.g. an error message)."""
    text = str(text)
    for url in urls:
        if url:
            for secret in secrets(url):
                text = text.replace(secret, MASK)
    return text
