"""report.md -> a self-contained report.html (images embedded as data URIs)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from markdown_it import MarkdownIt

CSS = """
body { font: 15px/1.5 -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } code { background: #f6f8fa; padding: 0 .3em; border-radius: 4px; }
"""


def embed_images(html: str, folder: Path) -> str:
    """Replace <img src="file.png"> by a base64 data URI, so the page is one file. Done on the
    rendered HTML: markdown-it scanning megabytes of base64 inline took ~2 s of a report."""

    def repl(m: re.Match) -> str:
        path = folder / m.group(1)
        if not path.exists():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+\.png)"', repl, html)


def write_html(report_md: Path) -> Path:
    text = report_md.read_text()
    body = embed_images(MarkdownIt("commonmark").enable("table").render(text), report_md.parent)
    title = text.splitlines()[0].lstrip("# ").strip()
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head><body>{body}</body></html>"
    out = report_md.with_suffix(".html")
    out.write_text(page)
    return out
