"""How a libpq conninfo is shown: never with its password.

Every conninfo that is printed, logged, raised in an error or stored in a table goes
through :func:`mask` (text) or :func:`mask_argv` (a command line) first.  Both accept any
text that *contains* a conninfo, not only a bare one: an argv joined by spaces, a
``repr``, a JSON document, an error message.

What is masked (the value becomes ``***``, the rest of the text is kept):

- key/value conninfo: ``password=secret``, ``password='a b \\' c'``, ``password = x``
  (also ``PGPASSWORD=...`` and ``--password=...``, which have the same shape);
- URIs: ``postgresql://user:secret@host/db`` and ``postgres://...`` -> ``user:***@``;
- URI query parameters: ``...?password=secret&sslmode=require`` -> ``password=***``.

An unquoted value ends at white space, or at a ``"`` or ``'`` that closes the string it
is written in (followed by white space, ``,``, ``:``, ``;``, ``)``, ``]``, ``}`` or the
end), so a conninfo inside JSON or a ``repr`` stays well-formed.

Only the standard library is used: :mod:`specprod_db.devdb.pgcluster` imports this module and
must run without the rest of the package.
"""
import re

#: What a masked password looks like.
MASK = "***"

# The keyword: ``password`` not preceded by a letter, digit, ``_``, ``?`` or ``&`` (so
# ``nopassword=`` is left alone and URI query parameters are handled by _QUERY), with
# an optional ``pg`` prefix (PGPASSWORD=...); libpq keywords are lower case, we also mask
# other cases.
_KEYWORD = r"(?<![A-Za-z0-9_?&])(?:pg)?password"
# A quoted value: libpq's single quotes with backslash escapes (unterminated: to the end).
_QUOTED = r"'(?:\\.|[^'\\])*(?:'|\Z)"
# A quote closing an enclosing string (JSON, repr): it ends an unquoted value.
_CLOSER = r"""["'](?=[\s,:;)\]}]|\Z)"""
# The pieces of a value after its start: quoted runs, escapes, characters up to white
# space or a closer.  Quoted runs let a shell-quoted conninfo (shlex.join turns a ' into
# '"'"') be masked whole.
_PIECE = rf"(?:'(?:\\.|[^'\\])*'|\\.|(?!{_CLOSER})[^\s\\])"
_VALUE = rf"(?:{_QUOTED}|{_PIECE}){_PIECE}*"
_KEYVALUE = re.compile(rf"({_KEYWORD}\s*=\s*)(?:{_VALUE})?", re.I)

# URI userinfo: scheme://user:password@ ; libpq ends the userinfo at the first '@' or '/'.
_URI = re.compile(r"(\bpostgres(?:ql)?://[^\s/@:'\"]*:)[^\s/@]*(?=@)", re.I)

# URI query parameter: ?password=... or &password=..., up to the next '&', '#' or space.
_QUERY = re.compile(rf"""([?&](?:pg)?password=)(?:(?!{_CLOSER})[^&#\s])*""", re.I)

# An argv element that is a password option whose value is the *next* element.
_PASSWORD_OPTION = re.compile(r"-{1,2}(?:pg|db-?)?password", re.I)


def mask(text):
    """``text`` with every password of a conninfo or URI in it replaced by ``***``.

    ``None`` stays ``None``; anything else is converted with ``str`` first.
    """
    if text is None:
        return None
    text = str(text)
    if "assword" not in text.lower() and "://" not in text:
        return text  # the common case, cheaply
    text = _URI.sub(lambda m: m.group(1) + MASK, text)
    text = _QUERY.sub(lambda m: m.group(1) + MASK, text)
    return _KEYVALUE.sub(lambda m: m.group(1) + MASK, text)


def mask_argv(argv):
    """A copy of the command line ``argv`` (a list) with passwords masked.

    Each element is masked as text (``--db "host=h password=x"`` is one element, so is
    ``--db=postgresql://u:x@h/db``); the element after a ``--password`` option is
    masked whole.
    """
    out = []
    hide_next = False
    for arg in argv:
        arg = str(arg)
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if _PASSWORD_OPTION.fullmatch(arg):
            hide_next = True
        out.append(mask(arg))
    return out


def secrets_of(conninfo):
    """The password(s) written in ``conninfo`` (which need not parse), for scrubbing
    messages that may echo pieces of them (libpq quotes the word it choked on).

    From ``password=`` up to the next ``keyword=`` (an unquoted password with a space in
    it does not parse, and libpq then names its second word), and URI passwords.
    """
    if not conninfo:
        return []
    found = []
    for m in re.finditer(rf"{_KEYWORD}\s*=\s*({_QUOTED}|.*?)(?=\s+[A-Za-z_]+\s*=|\Z)",
                         conninfo, re.I | re.S):
        value = m.group(1).strip()
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value.strip("'"))
        found.append(value)
    for m in re.finditer(r"\bpostgres(?:ql)?://[^\s/@:]*:([^\s/@]*)@", conninfo, re.I):
        found.append(m.group(1))
    for m in re.finditer(r"[?&](?:pg)?password=([^&#\s]*)", conninfo, re.I):
        found.append(m.group(1))
    return [v for v in found if v]


def scrub(message, conninfo):
    """``message`` (e.g. libpq's error for ``conninfo``) masked, and with no word of a
    password of ``conninfo`` left in it (words of 3 or more characters)."""
    message = mask(message)
    for secret in secrets_of(conninfo):
        for piece in sorted({secret, *secret.split()}, key=len, reverse=True):
            if len(piece) >= 3:
                message = message.replace(piece, MASK)
    return message
