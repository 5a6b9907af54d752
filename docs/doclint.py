"""Docstring lint for the public API (run by ``tests/test_docs.py``).

Checked: every name in ``blendtorch_ray.__all__`` and ``blender_worker.__all__``, and every
public function and class defined in the modules of ``API_MODULES``, with the public methods
and properties that a class defines itself (inherited ones belong to their own class). Rules:

- a docstring exists (for a dataclass: not the signature that ``@dataclass`` puts there);
- a function or method that takes parameters besides ``self``/``cls`` has an ``Args:``
  section that names each of them (``*args``/``**kwargs`` too); a class's ``__init__``
  parameters are documented in the class docstring (or in ``__init__``'s);
- a function that is annotated to return something other than None has ``Returns:``
  (or ``Yields:``); properties are exempt;
- a dataclass documents each field, with an attribute docstring below it (how pdoc shows
  fields) or in an ``Args:``/``Attributes:`` section.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Any, Callable, Optional

PACKAGES = ("blendtorch_ray", "blender_worker")

API_MODULES = (
    "blendtorch_ray.launcher",
    "blendtorch_ray.config",
    "blendtorch_ray.dataset",
    "blendtorch_ray.tcp_link",
    "blendtorch_ray.loader",
    "blendtorch_ray.errors",
    "blendtorch_ray.recording",
    "blendtorch_ray.ray_data",
    "blendtorch_ray.duplex",
    "blendtorch_ray.env",
    "blendtorch_ray.envs",
    "blendtorch_ray.rllib",
    "blendtorch_ray.coco",
    "blendtorch_ray.doctor",
    "blender_worker.publisher",
    "blender_worker.animation",
    "blender_worker.render",
    "blender_worker.camera",
    "blender_worker.annotations",
    "blender_worker.passes",
    "blender_worker.id_render",
    "blender_worker.duplex",
    "blender_worker.env",
    "blender_worker.randomize",
    "blender_worker.signals",
    "blender_worker.protocol",
)
"""Modules whose public functions and classes are all linted, beyond the packages' ``__all__``."""

_SECTION = re.compile(r"^(?P<indent>[ \t]*)(?P<name>[A-Z][A-Za-z ]+):[ \t]*$")
_ENTRY = re.compile(r"^(?P<name>\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(\([^)]*\))?\s*:")


def sections(doc: Optional[str]) -> dict[str, list[str]]:
    """Split a Google-style docstring into its sections.

    Args:
        doc: A docstring (``inspect.cleandoc`` is applied), or None.

    Returns:
        ``{section name: dedented body lines}`` for every ``Name:`` line that is followed by
        indented lines (``Args``, ``Returns``, ``Raises``, ``Example``, ...).
    """
    out: dict[str, list[str]] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    i = 0
    while i < len(lines):
        m = _SECTION.match(lines[i])
        if not m:
            i += 1
            continue
        base = len(m.group("indent"))
        body: list[str] = []
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        if body:
            out[m.group("name")] = _dedent(body)
            i = j
        else:
            i += 1
    return out


def _dedent(lines: list[str]) -> list[str]:
    width = min(len(ln) - len(ln.lstrip()) for ln in lines if ln.strip())
    return [ln[width:] for ln in lines]


def documented_names(doc: Optional[str], section: str = "Args") -> set[str]:
    """The names an ``Args:`` (or other list) section documents.

    Args:
        doc: A docstring, or None.
        section: Section to read; ``Args`` also accepts its aliases ``Arguments``,
            ``Parameters`` and ``Keyword Args``.

    Returns:
        Names without leading ``*``; empty when the section is missing.
    """
    names = {section}
    if section == "Args":
        names |= {"Arguments", "Parameters", "Keyword Args", "Keyword Arguments"}
    found: set[str] = set()
    for name, body in sections(doc).items():
        if name not in names:
            continue
        for line in body:
            if line[:1].isspace():
                continue  # continuation of an entry
            m = _ENTRY.match(line)
            if m:
                found.add(m.group("name").lstrip("*"))
    return found


def _own_doc(obj: Any) -> Optional[str]:
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


def _params(fn: Callable, method: bool) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())
    if method and params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [p.name for p in params]


def _returns_value(fn: Callable) -> bool:
    try:
        ann = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    if ann in (inspect.Signature.empty, None, "None", type(None)):
        return False
    # A context manager (``@contextmanager`` on a generator of None) returns nothing to document.
    return str(ann).replace("typing.", "") not in ("Iterator[None]", "Generator[None, None, None]")


def lint_function(qualname: str, fn: Callable, method: bool = False) -> list[str]:
    """Problems of one function or method.

    Args:
        qualname: Name to report it under.
        fn: The function (for a static or class method: the underlying function).
        method: Whether the first parameter is ``self``/``cls`` (not documented).

    Returns:
        One message per problem; empty when it is fine.
    """
    doc = _own_doc(fn)
    if doc is None:
        return [f"{qualname}: no docstring"]
    problems = []
    params = _params(fn, method)
    if params:
        if not sections(doc).keys() & {"Args", "Arguments", "Parameters", "Keyword Args"}:
            problems.append(f"{qualname}: takes {', '.join(params)} but has no Args: section")
        else:
            missing = [p for p in params if p not in documented_names(doc)]
            if missing:
                problems.append(f"{qualname}: Args: does not document {', '.join(missing)}")
    if _returns_value(fn) and not sections(doc).keys() & {"Returns", "Yields"}:
        problems.append(f"{qualname}: returns a value but has no Returns: section")
    return problems


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` as pdoc reads them (the string below each field)."""
    import pdoc.doc

    try:
        doc = pdoc.doc.Class(cls.__module__, cls.__qualname__, cls, (cls.__module__, cls.__qualname__))
    except Exception:  # noqa: BLE001 - no source (e.g. a class made at run time)
        return {}
    return {name: m.docstring for name, m in doc.members.items() if isinstance(m, pdoc.doc.Variable)}


def lint_class(qualname: str, cls: type) -> list[str]:
    """Problems of a class: its docstring, constructor arguments, fields and own members.

    Args:
        qualname: Name to report it under.
        cls: The class.

    Returns:
        One message per problem; empty when it is fine.
    """
    doc = _own_doc(cls)
    is_dataclass = dataclasses.is_dataclass(cls)
    if is_dataclass and doc is not None and doc.startswith(f"{cls.__name__}("):
        doc = None  # the signature @dataclass fills in
    if doc is None:
        return [f"{qualname}: no docstring"]
    problems = []
    if is_dataclass:
        attr_docs = _field_docs(cls)
        listed = documented_names(doc) | documented_names(doc, "Attributes")
        for f in dataclasses.fields(cls):
            if not attr_docs.get(f.name) and f.name not in listed:
                problems.append(f"{qualname}.{f.name}: dataclass field without a docstring")
    elif "__init__" in vars(cls):
        init = vars(cls)["__init__"]
        params = _params(init, method=True)
        if params:
            listed = documented_names(doc) | documented_names(_own_doc(init))
            missing = [p for p in params if p not in listed]
            if missing:
                problems.append(f"{qualname}: constructor arguments not in Args: {', '.join(missing)}")
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        where = f"{qualname}.{name}"
        if isinstance(member, property):
            if _own_doc(member.fget) is None and _own_doc(member) is None:
                problems.append(f"{where}: property without a docstring")
        elif isinstance(member, (staticmethod, classmethod)):
            problems += lint_function(where, member.__func__, method=isinstance(member, classmethod))
        elif inspect.isfunction(member):
            problems += lint_function(where, member, method=True)
    return problems


def lint_object(qualname: str, obj: Any) -> list[str]:
    """Problems of a public function or class (other objects are not checked).

    Args:
        qualname: Name to report it under.
        obj: The object.

    Returns:
        One message per problem.
    """
    if inspect.isclass(obj):
        return lint_class(qualname, obj)
    if inspect.isfunction(obj):
        return lint_function(qualname, obj)
    return []


def lint_module(modname: str) -> list[str]:
    """Problems of a module's docstring and its own public functions and classes.

    Args:
        modname: Dotted module name; imported here.

    Returns:
        One message per problem.
    """
    mod = importlib.import_module(modname)
    problems = [] if _own_doc(mod) else [f"{modname}: no module docstring"]
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != modname:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            problems += lint_object(f"{modname}.{name}", obj)
    return problems


def lint_exports(package: str) -> list[str]:
    """Problems of every name in ``package.__all__`` (lazy names are resolved).

    Args:
        package: Package name.

    Returns:
        One message per problem.
    """
    mod = importlib.import_module(package)
    problems = [] if _own_doc(mod) else [f"{package}: no module docstring"]
    for name in mod.__all__:
        obj = getattr(mod, name)
        problems += lint_object(f"{obj.__module__}.{obj.__qualname__}", obj)
    return problems


def lint_all() -> list[str]:
    """Lint the exports of both packages and every module of ``API_MODULES``.

    Returns:
        The problems, without duplicates, in the order found.
    """
    problems: list[str] = []
    for package in PACKAGES:
        problems += lint_exports(package)
    for modname in API_MODULES:
        problems += lint_module(modname)
    return list(dict.fromkeys(problems))


if __name__ == "__main__":
    found = lint_all()
    print("\n".join(found) or "no problems")
    raise SystemExit(1 if found else 0)
