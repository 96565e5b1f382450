"""Markdown -> one self-contained HTML file, for the subset the run report writes.

The `markdown` package is not a dependency, and the report needs little of Markdown: ATX headings, paragraphs,
`-` lists, pipe tables (with `---:` alignment), fenced code blocks, images on a line of their own, and inline
`code`, **bold**, *italic*, [links](url) and `<br>` inside table cells. Everything else is shown as text (HTML in
the source is escaped). Images are read from disk and embedded as `data:` URIs, so the file can be mailed or
opened from anywhere; a missing image becomes a visible note, not a broken link. No CDN, no external CSS or
script.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

CSS = """
:root { --fg: #1d232b; --muted: #5b6673; --line: #d7dde4; --head: #f2f5f8; --accent: #2f6fb0; }
* { box-sizing: border-box; }
body { font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.5em 2em 4em; max-width: 1180px; }
h1 { font-size: 1.8em; border-bottom: 2px solid var(--line); padding-bottom: .3em; }
h2 { font-size: 1.35em; margin-top: 2em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
a { color: var(--accent); }
code { font: .9em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eef1f4;
       padding: .1em .35em; border-radius: 4px; }
pre { background: #f5f7f9; border: 1px solid var(--line); border-radius: 6px; padding: .8em 1em; overflow-x: auto; }
pre code { background: none; padding: 0; }
.table { overflow-x: auto; margin: .8em 0; }
table { border-collapse: collapse; font-size: .92em; }
th, td { border: 1px solid var(--line); padding: .35em .65em; vertical-align: top; }
th { background: var(--head); text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .9em; }
em { color: var(--muted); }
nav.toc { background: var(--head); border: 1px solid var(--line); border-radius: 6px; padding: .6em 1.2em;
          display: inline-block; }
nav.toc ul { margin: .3em 0; padding-left: 1.2em; columns: 2; }
.missing { color: #a33; }
"""

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$")
_LIST = re.compile(r"^\s*[-*]\s+(.*)$")
_FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
_INLINE_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def slug(text: str) -> str:
    """An anchor id from a heading's text."""
    return re.sub(r"[^\w]+", "-", text.lower()).strip("-") or "section"


def inline(text: str) -> str:
    """One line of Markdown inline markup as HTML: escaped text with code spans, links, bold, italic, <br>."""
    parts = []
    pos = 0
    for m in _INLINE_CODE.finditer(text):  # code spans first: nothing inside them is markup
        parts.append(_inline_text(text[pos : m.start()]))
        parts.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    parts.append(_inline_text(text[pos:]))
    return "".join(parts)


def _inline_text(text: str) -> str:
    out = html.escape(text, quote=False).replace("&lt;br&gt;", "<br>")
    out = _LINK.sub(lambda m: f'<a href="{m.group(2).replace(chr(34), "&quot;")}">{m.group(1)}</a>', out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    return _ITALIC.sub(r"<em>\1</em>", out)


def split_row(line: str) -> list[str]:
    """Cells of a pipe-table row; `\\|` is a literal pipe, `\\\\` a literal backslash."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    cells, cur, i = [], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and body[i + 1] in "|\\":
            cur.append(body[i + 1])
            i += 2
            continue
        if c == "|":
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    cells.append("".join(cur).strip())
    return cells


def _is_separator(line: str) -> bool:
    cells = split_row(line)
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def _table(lines: list[str]) -> str:
    head = split_row(lines[0])
    aligns = ["num" if c.endswith(":") else "" for c in split_row(lines[1])]
    aligns += [""] * (len(head) - len(aligns))

    def row(cells: list[str], tag: str) -> str:
        cells = cells + [""] * (len(head) - len(cells))
        return "<tr>" + "".join(
            f"<{tag}{' class=num' if aligns[i] else ''}>{inline(c)}</{tag}>" for i, c in enumerate(cells[: len(head)])
        ) + "</tr>"  # fmt: skip

    body = "\n".join(row(split_row(line), "td") for line in lines[2:])
    return f'<div class="table"><table>\n<thead>{row(head, "th")}</thead>\n<tbody>\n{body}\n</tbody></table></div>'


def data_uri(path: Path) -> str:
    """A file as a `data:` URI (its type guessed from the name, PNG by default)."""
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(alt: str, src: str, base: Path | None) -> str:
    if re.match(r"^(data:|https?:)", src):
        raise ValueError(f"image {src[:60]!r}: the report embeds local files only (no external links)")
    path = (base / src) if base is not None else Path(src)
    if not path.is_file():
        return f'<p class="missing">[image {html.escape(src)} missing: {html.escape(alt)}]</p>'
    return (f'<figure><img src="{data_uri(path)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")  # fmt: skip


def to_html(md: str, base: Path | None = None, title: str | None = None, toc: bool = True) -> str:
    """The Markdown `md` as one HTML page; images are read relative to `base` and embedded. `toc` adds a table of
    contents of the level-2 headings after the first heading."""
    lines = md.replace("\r\n", "\n").split("\n")
    blocks: list[str] = []
    headings: list[tuple[str, str]] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            blocks.append(f"<p>{inline(' '.join(x.strip() for x in para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        fence = _FENCE.match(stripped)
        if fence:
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            lang = f' class="language-{fence.group(1)}"' if fence.group(1) else ""
            blocks.append(f"<pre><code{lang}>{html.escape(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
            continue
        heading = _HEADING.match(stripped)
        if heading:
            flush()
            level, text = len(heading.group(1)), heading.group(2)
            anchor = slug(text)
            if level == 2:
                headings.append((anchor, text))
            blocks.append(f'<h{level} id="{anchor}">{inline(text)}</h{level}>')
            i += 1
            continue
        image = _IMAGE.match(stripped)
        if image:
            flush()
            blocks.append(_figure(image.group(1), image.group(2), base))
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]))
            i = j
            continue
        if _LIST.match(line):
            flush()
            items = []
            while i < len(lines) and _LIST.match(lines[i]):
                items.append(f"<li>{inline(_LIST.match(lines[i]).group(1))}</li>")
                i += 1
            blocks.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        para.append(line)
        i += 1
    flush()
    if toc and headings:
        nav = "".join(f'<li><a href="#{a}">{inline(t)}</a></li>' for a, t in headings)
        first = next((k for k, b in enumerate(blocks) if b.startswith("<h1")), -1)
        blocks.insert(first + 1, f'<nav class="toc"><strong>Contents</strong><ul>{nav}</ul></nav>')
    page_title = title or next((t for t in _titles(md)), "Report")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(page_title)}</title>
<style>{CSS}</style>
</head>
<body>
{chr(10).join(blocks)}
</body>
</html>
"""


def _titles(md: str):
    for line in md.split("\n"):
        m = _HEADING.match(line.strip())
        if m and len(m.group(1)) == 1:
            yield m.group(2)


def write_html(md: str, path: Path, base: Path | None = None, title: str | None = None) -> Path:
    """Write `to_html(md)` to `path` (images relative to `base`, default: the file's folder)."""
    path = Path(path)
    path.write_text(to_html(md, base if base is not None else path.parent, title), encoding="utf-8")
    return path
