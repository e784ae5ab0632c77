"""Parser errors as one line a person can act on: the file, the line and column, what is wrong.

PyYAML's own message spans several lines and names the source ``"<unicode string>"``, which a web
page then swallows as an HTML tag; this keeps the position and drops the rest."""
from __future__ import annotations

import json


def parse_error(e: BaseException, shown: str) -> str:
    """``shown: line L, column C: problem`` for a YAML or JSON error (else the message on one line)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or type(e).__name__
        where = f"{shown}: line {mark.line + 1}, column {mark.column + 1}: {problem}"
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and cmark is not None and cmark is not mark:
            where += f" ({ctx} at line {cmark.line + 1}, column {cmark.column + 1})"
        return where
    if isinstance(e, json.JSONDecodeError):
        return f"{shown}: line {e.lineno}, column {e.colno}: {e.msg}"
    return f"{shown}: " + " ".join(str(e).replace('"<unicode string>"', "the text").split())
