"""The private names of faust-streaming, aiokafka and mode-streaming that stream-rec uses
(stream_rec/worker/internals.py): each still exists in the installed versions, the installed versions are
the pinned ones, and the code uses no private name of theirs that the list leaves out. An upgrade that
removes one fails here, naming it, instead of failing later in a running worker (or never running an
override at all)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from stream_rec.worker.internals import CHECKED_WITH, PRIVATE_NAMES

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ("faust", "aiokafka", "mode", "aiohttp")
# private names the code uses that are not Faust's, aiokafka's, mode's or aiohttp's: a name (wherever it is used), or
# (file, name) where the name alone could be anybody's -> whose it is
NOT_UPSTREAM = {
    "_asyncio_future_blocking": "asyncio's Future/Task handshake (stdlib)",
    "_WorkItem": "concurrent.futures.thread (stdlib)",
    "_SubParsersAction": "argparse (stdlib)",
    "_actions": "argparse (stdlib)",
    "_option_string_actions": "argparse (stdlib)",
    "_exit": "os._exit (stdlib)",
    "_replace": "a namedtuple's method (public by convention)",
    ("stream_rec/worker/trace.py", "_run"): "asyncio.events.Handle (stdlib)",
    ("stream_rec/worker/trace.py", "_callback"): "asyncio.events.Handle (stdlib)",
    ("stream_rec/recsys/enricher.py", "_table"): "our own HybridGRU (stream_rec/model)",
}


def _resolve(owner: str):
    module_name, _, qualname = owner.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def _assigned_in_source(cls, name: str) -> bool:
    """``name`` is an instance attribute that ``cls`` or one of its upstream bases sets or declares."""
    pattern = re.compile(rf"(\bself\.{re.escape(name)}\s*(=|:)|^\s+{re.escape(name)}\s*[:=])", re.M)
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in UPSTREAM:
            continue
        try:
            if pattern.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):  # a C extension's class has no source
            continue
    return False


@pytest.mark.parametrize("entry", PRIVATE_NAMES, ids=lambda e: f"{e.owner}.{e.name}")
def test_every_listed_private_name_still_exists(entry):
    owner = _resolve(entry.owner)
    if entry.kind in ("class", "global"):
        assert hasattr(owner, entry.name), f"{entry.owner} has no {entry.name} any more (used by {entry.where})"
    elif entry.kind in ("override", "method"):
        assert callable(getattr(owner, entry.name, None)), \
            f"{entry.owner}.{entry.name} is gone: {entry.where} (worker/internals.py says how to upgrade)"
    else:
        assert entry.kind == "attribute", entry
        assert hasattr(owner, entry.name) or _assigned_in_source(owner, entry.name), \
            f"{entry.owner} no longer sets {entry.name}: {entry.where} (worker/internals.py says how to upgrade)"


def test_installed_versions_are_the_pinned_ones():
    pins = {Requirement(r).name: Requirement(r)
            for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for package, checked in CHECKED_WITH.items():
        spec = pins[package].specifier
        assert checked in spec, f"worker/internals.py was checked with {package} {checked}, outside the pin {spec}"
        installed = importlib.metadata.version(package)
        assert installed in spec, f"{package} {installed} is installed, pyproject.toml pins {spec}"
        assert any(s.operator == "<" for s in spec), \
            f"{package} needs an upper bound: its private names are checked per minor version"


def _private_names_used(path: Path) -> set[str]:
    """Private names the file reaches on objects other than self/cls: ``x._name`` (``super()._name``
    included) and ``getattr(x, "_name")``."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                used.add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__")):
            used.add(node.args[1].value)
    return used


def test_the_code_reaches_no_private_name_the_list_leaves_out():
    listed = {entry.name for entry in PRIVATE_NAMES}
    unlisted = []
    for path in sorted((ROOT / "stream_rec").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for name in _private_names_used(path):
            if name not in listed and name not in NOT_UPSTREAM and (rel, name) not in NOT_UPSTREAM:
                unlisted.append(f"{rel}: {name}")
    assert not unlisted, ("private names used but not listed in stream_rec/worker/internals.py (or, if not "
                          f"Faust's/aiokafka's/mode's/aiohttp's, in this test's NOT_UPSTREAM): {unlisted}")


def _our_upstream_subclasses():
    """Our classes with a faust/aiokafka/mode base, the nested one of io/records.py included."""
    from stream_rec.io import records

    modules = ["stream_rec.worker.transport", "stream_rec.worker.intake", "stream_rec.worker.table",
               "stream_rec.worker.sends", "stream_rec.worker.observe", "stream_rec.worker.run", "stream_rec.io.records"]
    classes = [records._contained_records_class()]
    for name in modules:
        module = importlib.import_module(name)
        classes += [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
    return [c for c in classes if any(b.__module__.split(".")[0] in UPSTREAM for b in c.__mro__[1:])]


def _class_tree(klass) -> ast.AST:
    """The class statement of ``klass`` (also of a class defined inside a function)."""
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except OSError:  # inspect cannot find classes defined in a function
        module = ast.parse(Path(inspect.getsourcefile(klass)).read_text())
        return next(n for n in ast.walk(module) if isinstance(n, ast.ClassDef) and n.name == klass.__name__)


def test_our_subclasses_use_only_listed_upstream_privates():
    """Methods our subclasses override and inherited private attributes they use (``self._x``) are
    upstream names too: each must be listed, so an upgrade that drops it fails above."""
    listed = {entry.name for entry in PRIVATE_NAMES}
    classes = _our_upstream_subclasses()
    assert {"LowLatencyConsumer", "LowLatencyConsumerThread", "BatchedChangelogTable", "Worker",
            "ContainedMemoryRecords"} <= {c.__name__ for c in classes}
    unlisted = []
    for cls in classes:
        ours = [k for k in cls.__mro__ if k.__module__.startswith("stream_rec")]
        upstream = [k for k in cls.__mro__ if k.__module__.split(".")[0] in UPSTREAM]
        names = set()
        for klass in ours:
            tree = _class_tree(klass)
            names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "self"}
        for name in sorted(n for n in names if n.startswith("_") and not n.startswith("__")):
            inherited = any(hasattr(k, name) for k in upstream) or _assigned_in_source(upstream[0], name)
            if inherited and name not in listed:
                unlisted.append(f"{cls.__module__}.{cls.__name__}: {name}")
    assert not unlisted, f"upstream private names used by our subclasses, not listed in worker/internals.py: {unlisted}"
