"""A small, strict BibTeX reader: enough to check a family's `citation` and the `references.bib` we write.

    entries = parse_entries(text)      # [BibEntry(entry_type, key, fields), ...]; ValueError naming the line
    entry = parse_entry(text)          # exactly one entry, with author, title, year and a venue

It reads what BibTeX reads (`@type{key, name = {value} | "value" | number | macro # ..., ...}`, braces balanced,
`%` comment lines between entries) and refuses anything else, so a citation that would break a LaTeX build
fails where it is declared, not in a user's paper.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_KEY = re.compile(r"[^\s,{}()\"#%'=\\]+")
_NUMBER = re.compile(r"[0-9]+")
VENUE_FIELDS = ("journal", "booktitle", "publisher", "school", "institution", "howpublished")


@dataclass(frozen=True)
class BibEntry:
    entry_type: str  # lower case, e.g. "inproceedings"
    key: str
    fields: dict  # lower-case field name -> value as written, outer braces or quotes removed

    @property
    def venue(self) -> str | None:
        return next((self.fields[name] for name in VENUE_FIELDS if name in self.fields), None)


class _Reader:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def fail(self, what: str):
        line = self.text.count("\n", 0, self.pos) + 1
        near = self.text[self.pos:self.pos + 30].split("\n")[0]
        raise ValueError(f"BibTeX, line {line}: {what} (at {near!r})")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            self.fail(f"expected {char!r}")
        self.pos += 1

    def match(self, pattern: re.Pattern, what: str) -> str:
        self.skip_space()
        found = pattern.match(self.text, self.pos)
        if not found:
            self.fail(f"expected {what}")
        self.pos = found.end()
        return found.group(0)

    def delimited(self, opening: str, closing: str) -> str:
        """The text between `opening` and its matching `closing`; braces inside must balance."""
        self.expect(opening)
        start, depth = self.pos, 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                self.pos += 2
                continue
            if char == "{":
                depth += 1
            elif char == "}" and depth:
                depth -= 1
            elif char == closing and depth == 0:
                self.pos += 1
                return self.text[start:self.pos - 1]
            elif char == "}":
                self.fail("unbalanced '}'")
            self.pos += 1
        self.pos = start
        self.fail(f"no closing {closing!r}")

    def value(self) -> str:
        parts = []
        while True:
            char = self.peek()
            if char == "{":
                parts.append(self.delimited("{", "}"))
            elif char == '"':
                parts.append(self.delimited('"', '"'))
            elif char.isdigit():
                parts.append(self.match(_NUMBER, "a number"))
            elif char.isalpha():
                parts.append(self.match(_NAME, "a string name"))
            else:
                self.fail("expected a value: {...}, \"...\", a number or a string name")
            if self.peek() != "#":
                return "".join(parts)
            self.pos += 1

    def entry(self) -> BibEntry:
        self.expect("@")
        entry_type = self.match(_NAME, "an entry type such as article or inproceedings").lower()
        if entry_type in ("comment", "preamble", "string"):
            self.fail(f"@{entry_type} is not supported here; give plain entries")
        self.expect("{")
        key = self.match(_KEY, "a citation key")
        fields: dict[str, str] = {}
        while self.peek() == ",":
            self.pos += 1
            if self.peek() == "}":
                break
            name = self.match(_NAME, "a field name").lower()
            if name in fields:
                self.fail(f"field {name!r} appears twice in entry {key!r}")
            self.expect("=")
            fields[name] = self.value().strip()
        self.expect("}")
        return BibEntry(entry_type, key, fields)


def parse_entries(text: str) -> list[BibEntry]:
    """Every entry of `text`; between entries only blank lines and `%` comment lines are allowed."""
    reader, entries = _Reader(text), []
    while True:
        char = reader.peek()
        if not char:
            return entries
        if char == "%":
            end = text.find("\n", reader.pos)
            reader.pos = len(text) if end < 0 else end + 1
            continue
        if char != "@":
            reader.fail("text outside an entry; start entries with @ and comment lines with %")
        entries.append(reader.entry())


def parse_entry(text: str) -> BibEntry:
    """Exactly one entry, with the fields a reference needs: author, title, year and a venue."""
    entries = parse_entries(text)
    if len(entries) != 1:
        raise ValueError(f"expected one BibTeX entry, found {len(entries)}")
    entry = entries[0]
    missing = [name for name in ("author", "title", "year") if not entry.fields.get(name)]
    if entry.venue is None:
        missing.append(" or ".join(VENUE_FIELDS[:2]))
    if missing:
        raise ValueError(f"BibTeX entry {entry.key!r} lacks {', '.join(missing)}")
    return entry
