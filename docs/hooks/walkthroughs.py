"""mkdocs hook: every walkthrough, executed, as a page of the site.

``on_config`` lists the lessons (``walkthroughs/[0-9][0-9]_*.py``, the folder named by ``extra.walkthroughs``
in ``mkdocs.yml``) in the nav's "Walkthroughs" section; ``on_files`` executes them (``executor.py``: cell by
cell, in one namespace, a fresh record reused) and adds one generated page per lesson — its markdown cells
(math included), its code cells, their printed output and the pictures each cell wrote, inline — plus the
pictures themselves, and the section's index page made from ``walkthroughs/README.md``. A lesson that
raises, or prints a "mismatch", fails the build with the cell and the traceback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import posixpath
import re
import time
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

_spec = importlib.util.spec_from_file_location("walkthrough_executor", Path(__file__).with_name("executor.py"))
executor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(executor)

log = logging.getLogger("mkdocs.hooks.walkthroughs")
SECTION = "Walkthroughs"
FOLDER = "walkthroughs"  # where the pages go in the site


def _source_folder(config) -> Path:
    root = Path(config.config_file_path).resolve().parent
    return root / config.extra.get("walkthroughs", "walkthroughs")


def _title(script: Path) -> str:
    """The lesson's first markdown heading (``# 02 · LayerNorm, backward by hand``)."""
    match = re.search(r"^# # (.+)$", script.read_text(encoding="utf-8"), re.M)
    return match.group(1).strip() if match else script.stem


def nav_section(items, title):
    """The list under ``title`` in a nav (a list of strings and one-key dicts), searched depth first."""
    for item in items or []:
        if isinstance(item, dict):
            for key, value in item.items():
                if key == title and isinstance(value, list):
                    return value
                found = nav_section(value if isinstance(value, list) else None, title)
                if found is not None:
                    return found
    return None


def on_config(config):
    scripts = executor.walkthroughs(_source_folder(config))
    section = nav_section(config.nav, SECTION)
    if section is None:
        raise PluginError(f"mkdocs.yml's nav needs a {SECTION!r} section for the walkthrough pages")
    listed = {next(iter(item.values())) if isinstance(item, dict) else item for item in section}
    for script in scripts:
        uri = f"{FOLDER}/{script.stem}.md"
        if uri not in listed:
            section.append({_title(script): uri})
    return config


def _fence(text: str, language: str, title: str | None = None) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    head = f"{ticks}{language}" + (f' title="{title}"' if title else "")
    return f"{head}\n{text.rstrip()}\n{ticks}"


def _markdown_cell(source: str) -> str:
    """A markdown cell as the site reads it: two display formulas on adjacent lines (``…$$`` then ``$$…``),
    one block in a notebook, become two blocks, which arithmatex needs."""
    return re.sub(r"\$\$\n(\s*)\$\$", r"$$\n\n\1$$", source)


def page_markdown(script: Path, record: dict, pictures: Path | None = None) -> str:
    """One lesson as Markdown: its cells in order, each code cell followed by its output and pictures
    (the folder ``pictures`` the run wrote them to printed as ``$WALKTHROUGH_OUT``)."""
    parts = []
    for cell in record["cells"]:
        if cell["kind"] == "markdown":
            parts.append(_markdown_cell(cell["source"]))
            if len(parts) == 1:  # after the title and introduction: where it comes from
                parts.append(
                    f"*Executed when the site was built, from `walkthroughs/{script.name}` "
                    f"({record['seconds']:.1f} s); run it yourself with `python walkthroughs/{script.name}`.*"
                )
            continue
        parts.append(_fence(cell["source"], "python"))
        output = cell["stdout"] if pictures is None else cell["stdout"].replace(str(pictures), "$WALKTHROUGH_OUT")
        if output.strip():
            parts.append(_fence(output, "text", "output"))
        for picture in cell["pictures"]:
            parts.append(f"![{picture}]({script.stem}/{picture})")
    return "\n\n".join(parts) + "\n"


def _index_markdown(folder: Path) -> str:
    """``walkthroughs/README.md`` with each lesson's file name linked to its page."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    return re.sub(r"^\| `(\d\d_\w+)\.py` \|", lambda m: f"| [`{m.group(1)}.py`]({m.group(1)}.md) |", text, flags=re.M)


def on_files(files, config):
    folder = _source_folder(config)
    scripts = executor.walkthroughs(folder)
    cache = Path(config.config_file_path).resolve().parent / "build" / "walkthroughs"
    any_age = os.environ.get("DOCS_WALKTHROUGHS") == "reuse"  # as run_all reads it
    started = time.perf_counter()
    reused = sum(executor.fresh_record(s, cache, any_age) is not None for s in scripts)
    records = executor.run_all(scripts, cache)
    log.info(
        f"walkthroughs: {len(scripts) - reused} executed, {reused} reused, in {time.perf_counter() - started:.1f} s "
        f"(each one alone: {sum(r['seconds'] for r in records.values()):.1f} s in all)"
    )
    for script in scripts:
        record = records[script.name]
        if record["error"]:
            where = record["error"]["cell"]
            raise PluginError(f"walkthrough {script.name} raised (cell {where}):\n{record['error']['traceback']}")
        if record["mismatches"]:
            raise PluginError(f"walkthrough {script.name} reported a mismatch:\n" + "\n".join(record["mismatches"]))
        pictures = executor.record_dir(script, cache) / "pictures"
        content = page_markdown(script, record, pictures)
        files.append(File.generated(config, f"{FOLDER}/{script.stem}.md", content=content))
        for picture in record["pictures"]:
            path = pictures / picture
            files.append(File.generated(config, f"{FOLDER}/{script.stem}/{picture}", abs_src_path=str(path)))
    if (folder / "README.md").is_file() and files.get_file_from_path(f"{FOLDER}/index.md") is None:
        files.append(File.generated(config, f"{FOLDER}/index.md", content=_index_markdown(folder)))
    return files


_MENTION = re.compile(r"`walkthroughs/(\d\d_\w+)\.py`")


def on_page_markdown(markdown, page, config, files):
    """A lesson's file named in prose (`` `walkthroughs/12_vision.py` ``) links to its page."""
    here = posixpath.dirname(page.file.src_uri)

    def link(match):
        target = f"{FOLDER}/{match.group(1)}.md"
        if files.get_file_from_path(target) is None or target == page.file.src_uri:
            return match.group(0)
        return f"[{match.group(0)}]({posixpath.relpath(target, here or '.')})"

    return _MENTION.sub(link, markdown)
