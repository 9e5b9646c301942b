"""Kernel module dependencies, read from ``modules.dep`` and ``modules.builtin``.

``modules.dep`` has one line per module: ``path/to/mod.ko[.xz]: path/to/dep.ko ...``. A module's
name is its file name without the ``.ko*`` suffix, with ``-`` read as ``_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ModuleNotFound(LookupError):
    """A requested module is neither a loadable module nor built into the kernel."""


def module_name(path: str) -> str:
    """``kernel/fs/ext4/ext4.ko.xz`` -> ``ext4``."""
    base = path.rsplit("/", 1)[-1]
    base = base.split(".ko", 1)[0]
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """Module name -> (relative path, direct dependencies' names), plus built-in names."""

    paths: dict[str, str]
    depends: dict[str, tuple[str, ...]]
    builtin: frozenset[str]

    @classmethod
    def parse(cls, modules_dep: str, modules_builtin: str = "") -> ModuleIndex:
        paths: dict[str, str] = {}
        depends: dict[str, tuple[str, ...]] = {}
        for line in modules_dep.splitlines():
            if not line.strip():
                continue
            target, _, deps = line.partition(":")
            name = module_name(target.strip())
            paths[name] = target.strip()
            depends[name] = tuple(module_name(d) for d in deps.split())
        builtin = frozenset(module_name(p) for p in modules_builtin.split())
        return cls(paths, depends, builtin)

    @classmethod
    def load(cls, modules_dir: Path) -> ModuleIndex:
        builtin = modules_dir / "modules.builtin"
        return cls.parse((modules_dir / "modules.dep").read_text(),
                         builtin.read_text() if builtin.exists() else "")

    def load_order(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """Relative paths of ``names`` and all their dependencies, each after what it needs.

        Built-in modules are skipped; an unknown name raises ModuleNotFound.
        """
        order: list[str] = []
        visiting: set[str] = set()
        done: set[str] = set()

        def visit(name: str, wanted_by: str | None) -> None:
            name = name.replace("-", "_")
            if name in done:
                return
            if name not in self.paths:
                if name in self.builtin:
                    done.add(name)
                    return
                needed = f" (needed by {wanted_by})" if wanted_by else ""
                raise ModuleNotFound(f"kernel module {name!r} not found{needed}")
            if name in visiting:
                raise ModuleNotFound(f"dependency cycle through kernel module {name!r}")
            visiting.add(name)
            for dep in self.depends[name]:
                visit(dep, name)
            visiting.discard(name)
            done.add(name)
            order.append(self.paths[name])

        for requested in names:
            visit(requested, None)
        return order
