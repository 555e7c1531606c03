"""mkdocs hook: one API page per module of ``numpy_transformer.functional``, generated.

Each page is a single mkdocstrings directive (``::: numpy_transformer.functional.softmax``), listed in the
nav's "Functional ops" section, so a new op file gets its page (and its typeset formulas) without an edit
here. The package pages of modules, models and optim are ordinary files in ``docs/pages/api/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

# The nav search lives in the walkthroughs hook (a hook is loaded by path, not as a package module).
_spec = importlib.util.spec_from_file_location("walkthroughs_hook", Path(__file__).with_name("walkthroughs.py"))
walkthroughs_hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(walkthroughs_hook)

SECTION = "Functional ops"
PACKAGE = "numpy_transformer.functional"


def _modules(config) -> list[str]:
    root = Path(config.config_file_path).resolve().parent
    folder = root.joinpath(*PACKAGE.split("."))
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def on_config(config):
    section = walkthroughs_hook.nav_section(config.nav, SECTION)
    if section is None:
        raise PluginError(f"mkdocs.yml's nav needs a {SECTION!r} section for the generated API pages")
    for name in _modules(config):
        section.append({name: f"api/functional/{name}.md"})
    return config


def on_files(files, config):
    for name in _modules(config):
        content = f"# `{PACKAGE}.{name}`\n\n::: {PACKAGE}.{name}\n    options:\n      show_root_heading: false\n"
        files.append(File.generated(config, f"api/functional/{name}.md", content=content))
    return files
