"""
The layers of the code, checked from the imports of every module.

The rules (the same list is in docs/architecture.md, "Layers"):

1. A backend (``artifactvault/backends/``) imports neither ``treq`` nor
   ``artifactvault.cache``: it talks to its upstream through the core's
   L{artifactvault.upstream.Upstream} (``request``, ``read_small``) and to
   the cache through the L{artifactvault.vault.Vault}. The one type a backend
   needs from the store, ``Entry`` (to describe a small record it keeps), is
   imported from ``artifactvault.vault``, which hands it on, so that no
   backend names the store module at all.
2. The store (``artifactvault/cache/``) imports neither ``twisted.web`` nor
   ``artifactvault.backends``, nor the core above it (``artifactvault.flight``,
   ``artifactvault.vault``, ``artifactvault.serve``): it knows entries, not
   HTTP answers, downloads or backends. (The S3 store's own HTTP is in
   ``artifactvault/s3wire.py``, which answers no client either.)
3. ``artifactvault/flight.py``, ``artifactvault/upstream.py`` and
   ``artifactvault/s3wire.py`` import neither ``twisted.web.server`` nor
   ``twisted.web.resource``: they fetch; answering clients is ``serve.py``'s job.
4. No backend reaches the store through the vault either (no attribute
   named ``store`` is read in ``artifactvault/backends/``): records and small
   documents go through the vault's records API (L{Vault.record},
   L{Vault.keep}, L{Vault.read}).

Imports anywhere in a module count (inside functions too), and so does
``from package import module``.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifactvault")

#: (which modules, by path below the package; which imports they may not have)
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("backends/", ("treq", "artifactvault.cache")),
    ("cache/", ("twisted.web", "artifactvault.backends", "artifactvault.flight", "artifactvault.vault",
                "artifactvault.serve")),
    ("flight.py", ("twisted.web.server", "twisted.web.resource")),
    ("upstream.py", ("twisted.web.server", "twisted.web.resource")),
    ("s3wire.py", ("twisted.web.server", "twisted.web.resource", "artifactvault.backends")),
]


def module_name(path: str) -> str:
    """``.../artifactvault/backends/pypi.py`` → ``artifactvault.backends.pypi``."""
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")]
    parts = relative.split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module C{source} imports: C{a.b} for ``import a.b``, C{a} and C{a.x} for ``from a import x``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(found: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in found for bad in forbidden
                  if name == bad or name.startswith(bad + "."))


def modules() -> list[str]:
    paths = []
    for directory, _, files in os.walk(PACKAGE):
        paths += [os.path.join(directory, f) for f in files if f.endswith(".py")]
    return sorted(paths)


class LayerTests(SynchronousTestCase):

    def test_rules_hold(self) -> None:
        """No module imports what its layer's rule forbids (the module docstring lists the rules)."""
        broken = []
        checked = {where: 0 for where, _ in RULES}
        for path in modules():
            relative = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                found = imports(f.read(), module_name(path), path.endswith("__init__.py"))
            for where, forbidden in RULES:
                if relative == where or (where.endswith("/") and relative.startswith(where)):
                    checked[where] += 1
                    broken += [f"{relative} imports {name}" for name in violations(found, forbidden)]
        self.assertEqual(broken, [])
        self.assertNotIn(0, checked.values(), f"a rule matches no module: {checked}")

    def test_backends_never_reach_the_store(self) -> None:
        """No backend reads an attribute named C{store} (C{vault.store}, C{context.vault.store}...)."""
        found = []
        for path in modules():
            relative = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
            if not relative.startswith("backends/"):
                continue
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            found += [f"{relative}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr == "store"]
        self.assertEqual(found, [])

    def test_checker_sees_every_form(self) -> None:
        """The checker finds plain, dotted, from-, relative and function-local imports."""
        source = ("import treq\n"
                  "from artifactvault.cache.store import Entry\n"
                  "from artifactvault import cache\n"
                  "from ..cache import usage\n"
                  "def f():\n    import twisted.web.server\n")
        found = imports(source, "artifactvault.backends.x")
        self.assertEqual(violations(found, ("treq", "artifactvault.cache", "twisted.web.server")),
                         ["artifactvault.cache", "artifactvault.cache.store",
                          "artifactvault.cache.store.Entry", "artifactvault.cache.usage",
                          "treq", "twisted.web.server"])

    def test_docs_list_the_rules(self) -> None:
        """docs/architecture.md states each rule this test checks."""
        with open(os.path.join(os.path.dirname(PACKAGE), "docs", "architecture.md"), encoding="utf-8") as f:
            text = f.read()
        section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
        items = [" ".join(item.split()) for item in section.split("\n- ")[1:]]
        for where, forbidden in RULES:
            item = [i for i in items if f"`{where}`" in i]
            self.assertTrue(item, f"docs/architecture.md's Layers list does not name {where}")
            for name in forbidden:
                self.assertIn(f"`{name}`", item[0], f"{where}: {name} is not in its rule")
        for item in items:  # and it states no rule that is not checked
            self.assertTrue(any(f"`{where}`" in item for where, _ in RULES), item)
