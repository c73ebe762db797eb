"""A griffe extension for the docs build: vmctl's reStructuredText-flavoured docstrings as Markdown.

* Sphinx roles such as ``:class:`Hypervisor``` or ``:func:`~vmctl.types.validate_name``` become
  cross-references when the name resolves to a public vmctl object (so a reference to something
  that is not documented fails ``mkdocs build --strict``), and code spans otherwise.
* Doctest examples (``>>>`` lines and their output) become ``pycon`` code blocks.
* A paragraph ending in ``::`` (a reStructuredText literal block) ends in ``:``.
* reStructuredText definition lists (a term, then its indented definition) become bullets.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|mod|data|obj|const):`(~?)([^`]+?)`")


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    if path == pkg.path:
        return pkg
    prefix = pkg.path + "."
    if not path.startswith(prefix):
        return None
    try:
        found = pkg[path[len(prefix) :]]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return found if isinstance(found, griffe.Object | griffe.Alias) else None


def _target(pkg: griffe.Module, obj: griffe.Object, name: str) -> str | None:
    """The documented path ``name`` refers to from ``obj``'s docstring, or None."""
    head, _, rest = name.partition(".")
    candidates = [name]
    try:
        resolved = obj.resolve(head)
        candidates.insert(0, resolved + ("." + rest if rest else ""))
    except (griffe.NameResolutionError, AttributeError):
        pass
    scope: griffe.Object | None = obj
    while scope is not None:  # a bare member name used inside its class or module
        candidates.append(f"{scope.path}.{name}")
        scope = scope.parent
    for path in candidates:
        found = _lookup(pkg, path)
        if found is None:
            continue
        try:
            final = found.final_target.path if isinstance(found, griffe.Alias) else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if any(part.startswith("_") for part in final.split(".")):
            return None
        return final
    return None


def _convert_roles(pkg: griffe.Module, obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        short, name = match.group(1) == "~", match.group(2).strip()
        label = name.rsplit(".", 1)[-1] if short else name
        target = _target(pkg, obj, name)
        return f"[`{label}`][{target}]" if target else f"`{label}`"

    return _ROLE.sub(replace, text)


def _convert_doctests(text: str) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            continue
        if _is_term(lines, i):
            indent = line[: len(line) - len(line.lstrip())]
            definition = []
            i += 1
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent + "  "):
                definition.append(lines[i].strip())
                i += 1
            out.append(f"{indent}- {line.strip()}: {' '.join(definition)}")
            continue
        out.append(re.sub(r"(\S)::$", r"\1:", line) if line.rstrip().endswith("::") else line)
        i += 1
    return "\n".join(out)


def _is_term(lines: list[str], i: int) -> bool:
    """A reStructuredText definition-list term: a short line after a blank line (or another
    definition), followed at once by an indented definition. Section headers (``Args:``) and
    list items are not terms."""
    line = lines[i]
    if not line.strip() or i + 1 >= len(lines) or line.rstrip().endswith(":"):
        return False
    if line.lstrip().startswith(("- ", "* ", ">>>", "|", "#")):
        return False
    indent = len(line) - len(line.lstrip())
    following = lines[i + 1]
    if not following.strip() or len(following) - len(following.lstrip()) < indent + 2:
        return False
    return i == 0 or not lines[i - 1].strip() or len(lines[i - 1]) - len(lines[i - 1].lstrip()) > indent


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = _convert_doctests(obj.docstring.value)
                obj.docstring.value = _convert_roles(pkg, obj, text)
