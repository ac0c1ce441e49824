"""HTML -> visible text for lyre.rag.loaders: the stdlib HTML parser, in a module of its own so
that indexing plain text never imports html.parser (what a fresh `lyre rag index` process pays
for every import counts: bench/rag_speed.py --cold)."""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _HTMLText(HTMLParser):
    """Collects visible text; block elements end lines, headings become '#' lines."""

    SKIP = {"script", "style", "noscript", "template", "svg"}
    BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "aside", "nav",
             "blockquote", "table", "tr", "ul", "ol", "dl", "dt", "dd", "figure", "form",
             "hr", "pre", "title", "body"}
    HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "title":
            self.parts.append("\n\n# ")  # the page title is the top heading
        elif tag in self.HEADINGS:
            self.parts.append("\n\n" + "#" * self.HEADINGS[tag] + " ")
        elif tag in self.BLOCK:
            self.parts.append("\n\n")
            self.pre_depth += tag == "pre"
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in {"td", "th"}:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.HEADINGS or tag in self.BLOCK:
            self.parts.append("\n\n")
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if not self.pre_depth:
            data = re.sub(r"\s+", " ", data)
        self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+\n", "\n", text)  # trailing spaces
    text = re.sub(r"\n[ \t]+(?=\S)", "\n", text)  # leading spaces left by collapsing
    text = re.sub(r"(#+ )\s+", r"\1", text)  # '#  Title' -> '# Title'
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
