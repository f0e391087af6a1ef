"""SQL text: the operation and collection a statement names, and its literals replaced by ``?``.

One tokenizing regular expression serves both jobs, so comments, quoted identifiers and strings are
never mistaken for keywords or literals. Results are cached by text (bounded LRU): services run the
same few hundred statements over and over, so the hot path is one dict lookup.

- :func:`describe` -> ``(operation, collection, query_text)``. ``operation`` is the first keyword
  (``WITH ...`` gives the main statement's keyword); ``collection`` is the one table after
  FROM/INTO/UPDATE/TABLE when the statement names exactly one (a join, a comma list or a subquery gives
  None: semconv asks not to guess among several). ``query_text`` is the text as is when the statement is
  parameterised, otherwise :func:`sanitize` of it.
- :func:`sanitize`: every string (``'..'``, ``E'..'``, ``N'..'``, ``X'..'``, ``B'..'``, dollar-quoted
  ``$tag$..$tag$``; MySQL double-quoted strings), number (integer, decimal, exponent, hex, negative) becomes
  ``?``, and ``IN (?, ?, ?)`` collapses to ``IN (?)``. Placeholders (``%s``, ``%(name)s``, ``$1``, ``?``,
  ``:name``), identifiers, ``"quoted identifiers"``, keywords and TRUE/FALSE/NULL are kept; comments are
  dropped, since they can hold anything.
  An unterminated string swallows the rest of the text, so a literal can never leak.
"""

from __future__ import annotations

import functools
import re

__all__ = ["describe", "sanitize"]

# Order matters: comments and quoted things first, so their contents are never seen as tokens.
_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<dollar>\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)\$.*?(?:\$(?P=tag)\$|\Z))
    | (?P<estring>(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*(?:'|\Z))
    | (?P<string>(?:(?<![\w$])(?:[NnXxBb]|[Uu]&))?'(?:[^']|'')*(?:'|\Z))
    | (?P<dquote>"(?:[^"]|"")*(?:"|\Z))
    | (?P<backtick>`(?:[^`]|``)*(?:`|\Z))
    | (?P<param>\$\d+|%(?:\([^)]*\))?s|\?|(?<![:\w]):[A-Za-z_]\w*)
    | (?P<number>(?<![\w$.])(?:0[xX][0-9A-Fa-f]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w$]))
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<comma>,)
    """,
    re.VERBOSE | re.DOTALL,
)
# MySQL (without ANSI_QUOTES) reads "..." as a string and \ as an escape in '...'.
_MYSQL_STRING = re.compile(r"""(?:(?<![\w$])[NnXxBb])?(?:'(?:[^'\\]|\\.|'')*(?:'|\Z)|"(?:[^"\\]|\\.|"")*(?:"|\Z))""",
                           re.DOTALL)
_IN_LIST = re.compile(r"(?i)(\bIN\s*\()\s*\?(?:\s*,\s*\?)+\s*\)")
_MAIN = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"})
_TABLE_AFTER = {"SELECT": "FROM", "DELETE": "FROM", "INSERT": "INTO", "REPLACE": "INTO", "MERGE": "INTO",
                "UPDATE": None, "TRUNCATE": None, "COPY": None, "CREATE": "TABLE", "DROP": "TABLE",
                "ALTER": "TABLE", "LOCK": None}
_SKIP = frozenset({"TABLE", "ONLY", "IF", "NOT", "EXISTS", "TEMP", "TEMPORARY", "UNLOGGED", "LOW_PRIORITY",
                   "IGNORE", "QUICK", "DELAYED", "HIGH_PRIORITY", "OR", "ROLLBACK", "ABORT", "FAIL"})
_END_OF_TABLE = frozenset({"WHERE", "SET", "VALUES", "SELECT", "ORDER", "GROUP", "LIMIT", "HAVING", "AS",
                           "ON", "USING", "RETURNING", "FOR", "WINDOW", "UNION", "EXCEPT", "INTERSECT",
                           "OFFSET", "FETCH", "DEFAULT", "FROM", "TO", "WITH", "IN", "OUTPUT"})
_JOINS = frozenset({"JOIN", "CROSS", "NATURAL", "LEFT", "RIGHT", "INNER", "FULL", "OUTER", "STRAIGHT_JOIN"})
_OPERATORS = "=<>!+-*/%(,|&^~"


def _sanitize_tokens(sql: str, mysql: bool) -> str:
    out: list[str] = []
    last = 0
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind in ("string", "estring", "dollar") or (kind == "dquote" and mysql):
            start = m.start()
            out.append(sql[last:start])
            out.append("?")
            last = m.end()
        elif kind == "comment":  # a comment can hold anything (a password in a note, a token): dropped
            out.append(sql[last:m.start()].rstrip())
            last = m.end()
        elif kind == "number":
            start = m.start()
            # a leading '-' is part of the literal when it is a sign (after an operator, '(' or ','),
            # not a subtraction (after an identifier, number or ')').
            before = sql[last:start]
            stripped = before.rstrip()
            if stripped.endswith("-"):
                prev = stripped[:-1].rstrip()
                if not prev or prev[-1] in _OPERATORS or prev[-1:].isspace() or _ends_with_keyword(prev):
                    before = stripped[:-1]
            out.append(before)
            out.append("?")
            last = m.end()
    out.append(sql[last:])
    return _IN_LIST.sub(r"\1?)", "".join(out))


_SIGN_KEYWORDS = ("SELECT", "WHERE", "AND", "OR", "NOT", "THEN", "ELSE", "WHEN", "VALUES", "RETURN",
                  "LIMIT", "OFFSET", "BY", "IN", "IS", "BETWEEN", "LIKE", "SET", "CASE", "AS")


def _ends_with_keyword(text: str) -> bool:
    tail = text[-8:].upper()
    return any(tail.endswith(k) and (len(text) == len(k) or not text[-len(k) - 1].isalnum())
               for k in _SIGN_KEYWORDS)


@functools.lru_cache(maxsize=1024)
def _sanitize(sql: str, mysql: bool) -> str:
    if mysql:
        # MySQL escapes differ: replace its strings first, then reuse the general pass for numbers.
        sql = _MYSQL_STRING.sub("?", sql)
    return _sanitize_tokens(sql, mysql)


def sanitize(sql: str, dialect: str = "postgresql") -> str:
    """``sql`` with every literal replaced by ``?`` (see the module docstring)."""
    return _sanitize(sql, dialect in ("mysql", "mariadb"))


def _name(m: re.Match[str]) -> str:
    text = m.group()
    if m.lastgroup in ("dquote", "backtick"):
        return text[1:-1]
    return text


def _parse(sql: str) -> tuple[str, str | None]:
    tokens = [m for m in _TOKEN.finditer(sql) if m.lastgroup != "comment"]
    n = len(tokens)
    i = 0
    while i < n and tokens[i].lastgroup == "open":
        i += 1
    if i >= n or tokens[i].lastgroup != "word":
        return "", None
    operation = tokens[i].group().upper()
    i += 1
    if operation == "WITH":
        depth = 0
        while i < n:
            kind = tokens[i].lastgroup
            if kind == "open":
                depth += 1
            elif kind == "close":
                depth -= 1
            elif kind == "word" and depth == 0 and tokens[i].group().upper() in _MAIN:
                operation = tokens[i].group().upper()
                i += 1
                break
            i += 1
        else:
            return "WITH", None
    if operation not in _TABLE_AFTER:
        return operation, None
    after = _TABLE_AFTER[operation]
    if after is not None:
        depth = 0
        while i < n:
            kind = tokens[i].lastgroup
            if kind == "open":
                depth += 1
            elif kind == "close":
                depth -= 1
            elif depth == 0 and kind == "word" and tokens[i].group().upper() == after:
                break
            elif depth < 0:
                return operation, None
            i += 1
        else:
            return operation, None
        i += 1
        if operation in ("CREATE", "DROP", "ALTER") and after == "TABLE":
            pass
    while i < n and tokens[i].lastgroup == "word" and tokens[i].group().upper() in _SKIP:
        i += 1
    if i >= n or tokens[i].lastgroup not in ("word", "dquote", "backtick"):
        return operation, None  # a subquery, VALUES list ... : no single table
    parts = [_name(tokens[i])]
    i += 1
    # schema.table: the tokenizer reads "a.b" as one word when unquoted; quoted parts come separately
    while i < n and sql[tokens[i - 1].end():tokens[i].start()] == "." and tokens[i].lastgroup in ("word", "dquote",
                                                                                                   "backtick"):
        parts.append(_name(tokens[i]))
        i += 1
    collection = ".".join(parts)
    # Anything that adds a second table (a join, a comma list) means there is no single collection.
    if operation in ("SELECT", "DELETE", "UPDATE"):
        while i < n:
            m = tokens[i]
            kind = m.lastgroup
            if kind == "comma":
                return operation, None
            if kind == "word":
                word = m.group().upper()
                if word in _JOINS:
                    return operation, None
                if word in _END_OF_TABLE:
                    break
            elif kind == "open":
                break
            i += 1
    return operation, collection


@functools.lru_cache(maxsize=1024)
def describe(sql: str, dialect: str = "postgresql", parameterized: bool = False) -> tuple[str, str | None, str]:
    """``(operation, collection, query_text)`` for ``sql``; cached. ``operation`` is "" when unreadable."""
    operation, collection = _parse(sql)
    if collection is not None and len(collection) > 128:
        collection = None
    text = sql if parameterized else sanitize(sql, dialect)
    return operation, collection, text
