"""The HTML API reference builds, shows the main public names with their documented
sections, and every public docstring passes the lint (``docs/doclint.py``).

The build (``docs/build_api.py``, pdoc's Python API, no network) imports every module,
bpy included, so it runs in a subprocess: the test process stays free of Blender.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import REPO

DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS))
import doclint  # noqa: E402 - docs/doclint.py imports nothing heavy

pytestmark = pytest.mark.slow  # ~20 s: imports every module, Ray and bpy included


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api")
    proc = subprocess.run(
        [sys.executable, str(DOCS / "build_api.py"), str(out), "--lint"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert (out / "report.json").is_file(), f"the build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class _Docstrings(HTMLParser):
    """The rendered docstring of every documented name on a pdoc page.

    pdoc gives each module member an element whose ``id`` is its qualified name (``Camera``,
    ``Camera.world_to_pixel``) and renders its docstring in a ``div.docstring`` inside it
    (the source view is elsewhere, so raw docstring text does not count).
    """

    VOID = ("br", "img", "input", "meta", "link", "hr", "wbr", "source")

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, list[str]] = {}
        self._open: list[tuple[str, str | None, bool]] = []  # (tag, id, is a docstring div)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        attrs = dict(attrs)
        is_doc = tag == "div" and "docstring" in (attrs.get("class") or "").split()
        self._open.append((tag, attrs.get("id"), is_doc))
        if attrs.get("id"):
            self.text.setdefault(attrs["id"], [])

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        owner = None  # the innermost element with an id that encloses the docstring div
        for _, ident, is_doc in self._open:
            if is_doc:
                if owner is not None:
                    self.text[owner].append(data)
                return
            owner = ident or owner


def _members(page: Path) -> dict[str, str]:
    parser = _Docstrings()
    parser.feed(page.read_text())
    return {k: " ".join("".join(v).split()) for k, v in parser.text.items()}


EXPECTED = {
    "blendtorch_ray.html": {
        "BlenderLauncher": ["Arguments:", "config:", "Example:"],
        "BlenderLauncher.start": ["Returns:", "Raises:", "BlenderStartError"],
        "BlenderLauncher.dataset": ["Arguments:", "max_items:", "Returns:", "Raises:"],
        "BlenderLauncher.attach": ["Arguments:", "name:", "Returns:", "Raises:"],
        "LaunchConfig": ["Raises:", "FileNotFoundError"],
        "BlenderSpec.script": ["Path of the Blender-side Python script"],
        "SupervisionConfig.recycle_rss_mb": ["resident memory"],
        "RemoteIterableDataset": ["Arguments:", "max_items:", "btids:", "Raises:", "Example:"],
        "make_loader": ["Arguments:", "batch_size:", "Returns:", "Example:"],
        "BlendtorchError": ["Arguments:", "log_tail:"],
        "StreamTimeout": ["timeout"],
    },
    "blender_worker.html": {
        "DataPublisher": ["Arguments:", "launch:", "Raises:", "Example:"],
        "DataPublisher.publish": ["Arguments:", "**items:", "Raises:"],
        "AnimationController": ["Arguments:", "scene:", "Example:"],
        "AnimationController.play": ["Arguments:", "frame_range:", "Raises:"],
        "Renderer": ["Arguments:", "settings:"],
        "Renderer.render": ["Arguments:", "passes:", "Returns:", "Raises:"],
        "Camera": ["Arguments:", "bpy_camera:", "Raises:"],
        "Camera.world_to_pixel": ["Arguments:", "xyz_world:", "Returns:"],
        "parse_launch_args": ["Arguments:", "Returns:"],
        "Signal.add": ["Arguments:", "Returns:"],
    },
    "blendtorch_ray/locality.html": {
        "worker_share": ["Arguments:", "num_workers:", "Returns:"],
    },
    "blendtorch_ray/dataset.html": {
        "RemoteIterableDataset": ["Arguments:", "cross_node:", "Raises:"],
    },
    "blendtorch_ray/env.html": {
        "BlenderEnv": ["Arguments:", "observation_space:"],
        "EnvConfig.step_timeout": ["Seconds for any one request"],
    },
    "blendtorch_ray/recording.html": {
        "Recorder": ["Arguments:", "directory:", "Example:"],
        "ReplayDataset": ["Arguments:", "source:"],
    },
    "blendtorch_ray/duplex.html": {
        "GroupChannel.wait": ["Arguments:", "Returns:", "Raises:", "StreamTimeout"],
    },
    "blender_worker/passes.html": {
        "check_passes": ["Arguments:", "Returns:", "Raises:"],
    },
}


def test_pages_exist(site):
    report = json.loads((site / "report.json").read_text())
    assert (site / "index.html").is_file() and (site / "search.js").is_file()
    for package in ("blendtorch_ray", "blender_worker"):
        assert (site / f"{package}.html").is_file()
    for module in report["modules"]:
        page = site / (module.replace(".", "/") + ".html")
        assert page.is_file(), f"no page for {module}"
    for module in doclint.API_MODULES:
        assert module in report["modules"]
    index = (site / "index.html").read_text()
    assert "blendtorch_ray.launcher" in index and "blender_worker.camera" in index
    failed = [w for w in report["warnings"] if "Couldn't import" in w or "does not resolve" in w]
    assert not failed, "pdoc could not import or resolve:\n" + "\n".join(failed)


@pytest.mark.parametrize("page", sorted(EXPECTED))
def test_main_names_are_documented(site, page):
    members = _members(site / page)
    for name, needles in EXPECTED[page].items():
        assert name in members, f"{page}: no entry for {name}"
        missing = [n for n in needles if n not in members[name]]
        assert not missing, f"{page}: {name} lacks {missing}; its text: {members[name][:600]}"


def test_package_pages_link_the_modules(site):
    html = (site / "blendtorch_ray.html").read_text()
    for module in ("launcher", "dataset", "loader", "config", "recording", "ray_data", "env"):
        assert f'href="blendtorch_ray/{module}.html"' in html, module
    html = (site / "blender_worker.html").read_text()
    for module in ("publisher", "animation", "render", "camera", "passes", "randomize"):
        assert f'href="blender_worker/{module}.html"' in html, module


def test_docstring_lint(site):
    problems = json.loads((site / "report.json").read_text())["lint"]
    assert not problems, f"{len(problems)} docstring problem(s):\n" + "\n".join(problems)


# --- the lint itself: it must catch what it is meant to catch ------------------------------


def test_lint_reports_missing_docstrings_and_args():
    def undocumented(x):
        return x

    def no_args(x: int) -> int:
        """Does something."""
        return x

    def partial(x: int, *rest: int, **options: int) -> None:
        """Does something.

        Args:
            x: A number.
            *rest: More numbers.
        """

    def no_returns(x: int) -> int:
        """Does something.

        Args:
            x: A number.
        """
        return x

    def fine(x: int, **options: int) -> int:
        """Does something.

        Args:
            x (int): A number,
                on two lines.
            **options: Passed on.

        Returns:
            ``x``.
        """
        return x

    assert doclint.lint_function("undocumented", undocumented) == ["undocumented: no docstring"]
    assert "no Args: section" in doclint.lint_function("no_args", no_args)[0]
    assert doclint.lint_function("partial", partial) == ["partial: Args: does not document options"]
    assert "no Returns: section" in doclint.lint_function("no_returns", no_returns)[0]
    assert doclint.lint_function("fine", fine) == []


def test_lint_reports_classes_methods_and_fields():
    class Thing:
        """A thing."""

        def __init__(self, size: int) -> None:
            self.size = size

        def grow(self, by: int) -> None:
            pass

        @property
        def area(self) -> int:
            return self.size**2

        def _private(self, x):
            pass

    @dataclasses.dataclass
    class Options:
        """Options."""

        level: int = 1
        """How much."""
        name: str = ""

    @dataclasses.dataclass
    class Bare:
        level: int = 1

    problems = doclint.lint_class("Thing", Thing)
    assert "Thing: constructor arguments not in Args: size" in problems
    assert "Thing.grow: no docstring" in problems
    assert "Thing.area: property without a docstring" in problems
    assert not any("_private" in p for p in problems)
    assert doclint.lint_class("Options", Options) == ["Options.name: dataclass field without a docstring"]
    assert doclint.lint_class("Bare", Bare) == ["Bare: no docstring"]


def test_lint_finds_a_docstring_removed_from_the_real_api():
    """End to end on the real package: drop one method's docstring, the lint names it."""
    code = (
        "import doclint, blendtorch_ray.launcher as m\n"
        "m.BlenderLauncher.health.__doc__ = None\n"
        "print('\\n'.join(doclint.lint_exports('blendtorch_ray')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=DOCS)
    assert proc.returncode == 0, proc.stderr
    assert "blendtorch_ray.launcher.BlenderLauncher.health: no docstring" in proc.stdout.splitlines()
