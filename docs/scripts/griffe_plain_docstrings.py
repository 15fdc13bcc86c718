"""A griffe extension that renders polylstm's docstrings as they read in the source.

polylstm's docstrings are laid out for readers of the source: one argument and
its shape per line (``x: (T, B, I)``), reStructuredText roles
(``:func:`lstm_forward```) and ``::`` before literal blocks. Rendered as
Markdown those lines would run together into one paragraph and the roles would
show literally. This extension, loaded by ``mkdocs.yml`` for the API reference,
keeps each line break, turns roles into code spans and drops the ``::`` marker.
It changes only the text the site renders, never the code.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj|py:\w+):`~?([^`]+)`")


def plain(text: str) -> str:
    """Markdown that renders ``text`` line for line; code blocks (fenced, or
    indented after a blank line, as Markdown defines them) are left as they are."""
    text = ROLE.sub(r"`\1`", text)
    lines = text.split("\n")
    out = []
    fenced = indented = False
    for k, line in enumerate(lines):
        previous = lines[k - 1] if k else ""
        following = lines[k + 1] if k + 1 < len(lines) else ""
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            if line.startswith("    ") and not previous.strip():
                indented = True
            elif line.strip() and not line.startswith("    "):
                indented = False
        if fenced or indented or line.lstrip().startswith("```"):
            out.append(line)
            continue
        if line.rstrip().endswith("::"):
            line = line.rstrip()[:-1]  # "Example::" -> "Example:"
        # Two trailing spaces are Markdown's hard line break; an indented
        # continuation line stays part of its paragraph.
        if line.strip() and following.strip():
            line = line.rstrip() + "  "
        out.append(line)
    return "\n".join(out)


class PlainDocstrings(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
