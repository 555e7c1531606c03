"""mkdocs hook: the "explain" page, one op per family, made by ``explain`` at build time.

``torch_transformer.explain.explain_html(op, fragment=True)`` runs the op's backward on a small seeded input
and returns an HTML fragment: the forward's and the backward's formula (``<div class="arithmatex">\\[…\\]</div>``,
which the site's KaTeX typesets), every intermediate next to autograd's with its verdict, and a small heatmap
of each one as a data URI. The page ``explain.md`` (in the nav) gets one section per op of :data:`OPS`; an op
that ``explain`` cannot show fails the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "explain.md"
MARKER = "<!-- explain: the ops' sections are inserted here by docs/hooks/explain.py -->"
# one op per family: normalisation, softmax and cross-entropy, attention, convolution, boxes, the contrastive
# loss, Llama's norm
OPS = (
    "cross_entropy",
    "layer_norm",
    "scaled_dot_product_attention",
    "conv2d",
    "generalized_box_iou",
    "clip_loss",
    "rms_norm",
)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} needs the line {MARKER!r} where the ops' sections go")
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)  # this tree's packages, as the walkthroughs run them, whatever is installed
    try:
        from torch_transformer.explain import explain_html
    except ImportError as error:
        raise PluginError(f"the explain page needs torch_transformer.explain: {error}") from error
    sections = []
    for op in OPS:
        try:
            fragment = explain_html(op, fragment=True)
        except Exception as error:
            raise PluginError(f"explain {op} failed: {type(error).__name__}: {error}") from error
        # the fragment's own <h2> becomes a Markdown heading, so that the page's table of contents lists it
        match = re.search(r"<h2>(.*?)</h2>", fragment, re.S)
        title = match.group(1).replace("<code>", "`").replace("</code>", "`") if match else f"`{op}`"
        body = fragment.replace(match.group(0), "", 1) if match else fragment
        sections.append(f'## {title}\n\n<div class="explain-op">\n{body.strip()}\n</div>\n')
    return markdown.replace(MARKER, "\n".join(sections))
