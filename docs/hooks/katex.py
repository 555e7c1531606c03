"""mkdocs hook: KaTeX, bundled into the site (no script or font from elsewhere at view time).

The build installs KaTeX from the npm registry once, into ``build/katex/`` (git-ignored), with
``npm install --no-save --prefix build/katex katex@VERSION``, and copies its ``dist/`` files (the script,
the style sheet and the fonts the style sheet names) into the site under ``assets/katex/``.
``docs/pages/javascripts/katex-init.js`` then typesets what ``pymdownx.arithmatex`` (generic mode) marked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

KATEX_VERSION = "0.16.47"
SITE_FOLDER = "assets/katex"


def _dist(config) -> Path:
    prefix = Path(config.config_file_path).resolve().parent / "build" / "katex"
    dist = prefix / "node_modules" / "katex" / "dist"
    package = dist.parent / "package.json"
    if not package.is_file() or f'"version": "{KATEX_VERSION}"' not in package.read_text(encoding="utf-8"):
        npm = shutil.which("npm")
        if npm is None:
            raise PluginError("KaTeX is installed from the npm registry at build time, and npm is not on PATH")
        command = [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix)]
        result = subprocess.run([*command, f"katex@{KATEX_VERSION}"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PluginError(f"npm install katex@{KATEX_VERSION} failed:\n{result.stderr[-2000:]}")
    return dist


def on_files(files, config):
    dist = _dist(config)
    wanted = [dist / "katex.min.js", dist / "katex.min.css", *sorted((dist / "fonts").iterdir())]
    for path in wanted:
        uri = f"{SITE_FOLDER}/{path.relative_to(dist).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
