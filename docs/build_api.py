"""Build the HTML API reference of ``blendtorch_ray`` and ``blender_worker`` with pdoc.

    .venv/bin/python docs/build_api.py [OUT_DIR] [--lint]   # default OUT_DIR: docs/api

``scripts/docs.sh`` runs this; ``tests/test_docs.py`` runs it into a temporary directory so
that the reference cannot rot. Docstrings are Google style (``Args:``, ``Returns:``,
``Raises:``). No network is used: pdoc writes static HTML (one page per module, an index and
a search index) that opens from disk.

With ``--lint`` it also runs the docstring lint (``docs/doclint.py``) and writes
``OUT_DIR/report.json``: ``{"modules": [...], "warnings": [...], "lint": [...]}``.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import warnings
from pathlib import Path

PACKAGES = ("blendtorch_ray", "blender_worker")
"""The documented packages; every public submodule gets its own page."""

EXCLUDED = ("blender_worker.scenes",)
"""Not documented: the bundled scenes are Blender scripts, importing one would run it."""

REPO = Path(__file__).resolve().parent.parent


def resolve_lazy_exports(package: str) -> None:
    """Put the lazily imported names of ``package.__all__`` into its namespace.

    Both packages import some of their exports on first use (a module ``__getattr__``);
    pdoc only sees names that are in the module's ``__dict__``.

    Args:
        package: Name of the package.
    """
    mod = importlib.import_module(package)
    for name in getattr(mod, "__all__", ()):
        mod.__dict__.setdefault(name, getattr(mod, name))


def module_names() -> list[str]:
    """The modules to document: the packages and their public submodules, in order.

    Returns:
        Dotted module names; packages first, each followed by its submodules.
    """
    names: list[str] = []
    for package in PACKAGES:
        mod = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.iter_modules(mod.__path__, f"{package}."):
            short = info.name.rpartition(".")[2]
            if short.startswith("_") or info.name in EXCLUDED:
                continue
            names.append(info.name)
    return names


def build(output_directory: Path) -> tuple[list[str], list[str]]:
    """Write the HTML reference into ``output_directory``.

    Args:
        output_directory: Created if missing; existing pages are overwritten.

    Returns:
        ``(modules, warnings)``: the documented module names and the messages of the
        warnings pdoc gave (unresolvable annotations, modules that failed to import, ...).
    """
    import pdoc
    import pdoc.render

    for package in PACKAGES:
        resolve_lazy_exports(package)
    modules = module_names()
    pdoc.render.configure(
        docformat="google",
        footer_text="blendtorch-ray API reference",
        search=True,
        show_source=True,
    )
    output_directory = Path(output_directory)
    output_directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=output_directory)
    return modules, [str(w.message) for w in caught]


def main(argv: list[str]) -> int:
    """Command line entry point (see the module docstring).

    Args:
        argv: Arguments without the program name.

    Returns:
        0 on success; 1 when a module failed to import or (with ``--lint``) the lint found
        problems.
    """
    lint = "--lint" in argv
    args = [a for a in argv if a != "--lint"]
    out = Path(args[0]) if args else REPO / "docs" / "api"
    modules, messages = build(out)
    for message in messages:
        print(f"pdoc warning: {message}", file=sys.stderr)
    failed = [m for m in messages if "Couldn't import" in m or "does not resolve" in m]
    problems: list[str] = []
    if lint:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import doclint

        problems = doclint.lint_all()
        for problem in problems:
            print(f"doclint: {problem}", file=sys.stderr)
        report = {"modules": modules, "warnings": messages, "lint": problems}
        (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"API reference of {len(modules)} modules: {out / 'index.html'}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
