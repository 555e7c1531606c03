"""griffe extension: the docstrings' reST math, rewritten for the site's ``pymdownx.arithmatex``.

The code base writes math as numpydoc does, in reST: ``.. math::`` blocks (on the directive's line or
indented below it) and ``:math:`x``` roles. mkdocstrings renders docstrings as Markdown, where
arithmatex reads ``$$ … $$`` and ``$ … $``. Only the copy griffe loads is changed, never the source; a
paragraph written after a parameter list also gets the ``Notes`` header numpydoc expects there.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":math:`([^`]+)`")  # may run over a line break
_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")


_XREF = re.compile(r":(?:func|class|meth|attr|mod|obj):`~?([^`]+)`")


def _display(body: list[str]) -> list[str]:
    """A block's lines as KaTeX reads them: rows joined by ``\\\\`` or aligned at ``&`` go into ``aligned``,
    as Sphinx puts a multi-line ``.. math::`` into ``split``; a cross-reference role becomes typewriter text."""
    body = [_XREF.sub(lambda m: "\\texttt{" + m.group(1).replace("_", "\\_") + "}", line) for line in body]
    text = "\n".join(body)
    if ("&" in text or "\\\\" in text) and "\\begin{" not in text:
        return ["\\begin{aligned}", *body, "\\end{aligned}"]
    return body


def rst_math_to_markdown(text: str) -> str:
    """``.. math::`` blocks become ``$$`` blocks at the directive's indent; ``:math:`x``` becomes ``$x$``."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, body = match.group("indent"), [match.group("rest")] if match.group("rest").strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        if len(indent) < 4:  # under a list item indented by 3, as reST writes it: Markdown needs 4, or none
            indent = ""
        formula = "\n".join(f"{indent}{line}" for line in _display([line for line in body if line]))
        out += ["", f"{indent}$$", formula, f"{indent}$$", ""]
    return _ROLE.sub(lambda m: "$" + " ".join(m.group(1).split()) + "$", "\n".join(out))


_LIST_SECTIONS = {"Parameters", "Other Parameters", "Attributes", "Returns", "Yields", "Raises"}
_ITEM = re.compile(r"^\*{0,2}[A-Za-z_][\w.]*(\s*,\s*\*{0,2}[A-Za-z_][\w.]*)*(\s+:\s.*|\s*:)?\s*$")


def close_list_sections(text: str) -> str:
    """A paragraph after a numpydoc list section (``State buffers: ...`` after the parameters) gets a ``Notes``
    header: numpydoc reads the text up to the next header as more items, and would take it for a parameter."""
    lines, out, section = text.splitlines(), [], None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and set(nxt.strip()) == {"-"} and not line.startswith(" "):
            section = line.strip()
        elif (
            section in _LIST_SECTIONS
            and line.strip()
            and not line.startswith(" ")
            and i > 0
            and not lines[i - 1].strip()
            and not set(line.strip()) <= {"-"}
            and _ITEM.match(line) is None
        ):
            out += ["Notes", "-----"]
            section = "Notes"
        out.append(line)
    return "\n".join(out)


class RstMath(griffe.Extension):
    """Rewrite each loaded object's docstring once, for the site only (see the two functions above)."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is None:
            return
        value = close_list_sections(obj.docstring.value)
        if "math::" in value or ":math:`" in value:
            value = rst_math_to_markdown(value)
        obj.docstring.value = value
