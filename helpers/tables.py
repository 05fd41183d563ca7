"""Paper-ready per-action tables: LaTeX (booktabs), Markdown and CSV, one standalone `tables.tex`, and the
`references.bib` of the families compared. `helpers.consolidate` writes them into `report/tables/`.

One table per comparable group of the leaderboard (kind, protocol, box and root source) and metric: the
headline metric (Protocol 2 MPJPE, Protocol 1 PA-MPJPE, RootNet's MRPE), plus any metric asked for in
`TableOptions.metrics`. Columns: the 15 actions, in the order most papers print them (Martinez et al. 2017,
Sun et al. 2018, Pavllo et al. 2019; `protocol.PAPER_ACTION_ORDER`) or in the official action-index order, then
Avg. (the official total by default, the mean of the action columns on request). Rows: one per result, named as
in the leaderboard, with `\\cite{key}` where the family declares a citation; then, where a family declares
published values for the table's setting, one "(reported)" row per model (the published average, and the
per-action values where the family declares them).

Values are result.json's numbers printed with one decimal, as the published tables print them. The lowest
error of each column is bold and the second lowest underlined, among the rows that can be compared: full runs
of real weights on real data, and the reported rows. Ties: values are compared as printed (one decimal); every
row sharing the lowest printed value is bold, and every row sharing the next distinct printed value is
underlined (dense ranking), so two equal best values leave no column without a second. Rows of random demo
weights, generated data or partial runs are marked in the table itself (a symbol and a legend row) and are
never bold or underlined.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .atomic import write_text
from .bibtex import parse_entry
from .protocol import ACTION_ABBREVIATIONS, ACTION_NAMES, METRIC_LABELS, PAPER_ACTION_ORDER

TABLES_SUBDIR = "tables"
STANDALONE_FILE = "tables.tex"
REFERENCES_FILE = "references.bib"
ACTION_ORDERS = {"paper": PAPER_ACTION_ORDER, "official": ACTION_NAMES}
AVERAGES = ("total", "action_mean")
AVG = "Avg."
DECIMALS = 1  # as the published tables print them
MISSING = {"latex": "--", "markdown": "–", "csv": ""}

# Row marks: (LaTeX, plain text, legend). Rows with any of UNRANKED_FLAGS are never bold or underlined.
FLAGS = {
    "random_weights": (r"\dagger", "†", "random-initialised demo weights: the numbers say nothing about the model"),
    "generated_data": (r"\ddagger", "‡", "generated demo data (synthetic people), not Human3.6M recordings"),
    "partial": (r"\S", "§", "partial run: only part of the test set was evaluated"),
    "reduced_precision": (r"\P", "¶", "tf32/fp16/bf16 inference, not the official strict fp32"),
}
UNRANKED_FLAGS = ("random_weights", "generated_data", "partial")
RANKING_RULE = ("Bold: the lowest error of each column, underlined: the second lowest, among full runs of real "
                "weights on real data and the reported values; values are compared as printed (one decimal), "
                "every row sharing the lowest value is bold and every row sharing the next distinct value "
                "underlined.")


@dataclass(frozen=True)
class TableOptions:
    action_order: str = "paper"  # "paper" (Dir., Disc., Eat, Greet, Phone, Photo, Pose, ...) or "official"
    average: str = "total"  # Avg.: "total" (official: mean over samples x joints) or "action_mean"
    reported: bool = True  # add the published values as "(reported)" rows where the family declares them
    metrics: tuple[str, ...] = ()  # more metrics than the headline, e.g. ("pa_mpjpe_similarity",)

    def __post_init__(self):
        if self.action_order not in ACTION_ORDERS:
            raise ValueError(f"action order must be one of {', '.join(ACTION_ORDERS)}, got {self.action_order!r}")
        if self.average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {self.average!r}")
        unknown = [m for m in self.metrics if m not in METRIC_LABELS]
        if unknown:
            raise ValueError(f"unknown table metric(s) {unknown}; choose from {', '.join(METRIC_LABELS)}")


@dataclass(frozen=True)
class Entry:
    """One leaderboard row, as the tables need it (built by helpers.consolidate)."""

    name: str  # as in the leaderboard
    model_name: str  # the model without tags, e.g. "ConvNeXtPose L" (names the reported row)
    group: str  # the leaderboard group: numbers are comparable within it only
    result_name: str  # the result's folder
    result: dict
    spec: object | None = None  # models.spec.ModelSpec (registry or recorded): the published values
    precision: str | None = None  # "fp32", "fp16", "bf16" or None (unknown)


@dataclass
class Row:
    name: str
    source: str  # "measured" | "reported"
    values: dict  # column label -> mm (NaN where absent)
    citation_key: str | None = None
    flags: tuple[str, ...] = ()
    result: str | None = None  # the result's folder (measured rows)

    @property
    def ranked(self) -> bool:
        return not set(self.flags) & set(UNRANKED_FLAGS)


@dataclass
class PaperTable:
    slug: str  # file stem under report/tables/
    title: str
    caption: str
    group: str
    metric: str
    columns: tuple[str, ...]  # abbreviated action headings, then AVG
    rows: list[Row]
    marks: dict = field(default_factory=dict)  # (row index, column) -> "best" | "second"

    @property
    def flags(self) -> list[str]:
        present = {f for row in self.rows for f in row.flags}
        return [f for f in FLAGS if f in present]


# ---------------------------------------------------------------------------------------------- building
def citation_of(result: dict) -> str:
    """The BibTeX entry of a result's family: the registry's, else the one the result recorded ("" if none)."""
    from .models.registry import FAMILIES

    model = result.get("model") or {}
    family = FAMILIES.get(model.get("family"))
    return (family.citation if family is not None else "") or model.get("citation") or ""


def citation_key(result: dict) -> str | None:
    text = citation_of(result)
    try:
        return parse_entry(text).key if text else None
    except ValueError:
        return None  # references() reports it


def display_value(value) -> float:
    """A value as the tables print it (one decimal); NaN for a missing one. Ranks compare these."""
    return float(f"{value:.{DECIMALS}f}") if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def rank_marks(rows: list[Row], columns) -> dict:
    """(row index, column) -> "best" | "second": lowest and next-lowest printed value per column among the
    ranked rows (dense ranking: ties share a mark)."""
    marks = {}
    for column in columns:
        printed = {i: display_value(row.values.get(column, math.nan)) for i, row in enumerate(rows) if row.ranked}
        distinct = sorted({v for v in printed.values() if not math.isnan(v)})
        for mark, value in zip(("best", "second"), distinct):
            marks.update({(i, column): mark for i, v in printed.items() if v == value})
    return marks


def _flags(entry: Entry) -> tuple[str, ...]:
    facts = report.provenance(entry.result)
    present = {"random_weights": facts.random_weights, "generated_data": bool(facts.generated_data),
               "partial": facts.partial, "reduced_precision": entry.precision not in (None, "fp32")}
    return tuple(f for f in FLAGS if present[f])


def _measured_values(result: dict, metric: str, actions, average: str) -> dict:
    frame = report.per_action_frame(result)
    column = frame[METRIC_LABELS[metric]]
    values = {ACTION_ABBREVIATIONS[a]: float(column[a]) if a in column.index else math.nan for a in actions}
    values[AVG] = float(column[report.TOTAL_ROW if average == "total" else report.ACTION_MEAN_ROW])
    return values


def _reported_rows(members: list[Entry], actions, average: str) -> list[Row]:
    rows, seen = [], set()
    for entry in members:
        spec = entry.spec
        if spec is None or spec.model_id in seen or spec.kind != entry.result["kind"]:
            continue
        seen.add(spec.model_id)
        total, per_action = report.published_values(entry.result, spec)
        if total is None and not per_action:
            continue
        values = {ACTION_ABBREVIATIONS[a]: float(per_action[a]) if a in per_action else math.nan for a in actions}
        if average == "total":
            values[AVG] = math.nan if total is None else float(total)
        else:  # the papers publish totals; an action mean exists only where every action is declared
            values[AVG] = (sum(per_action[a] for a in actions) / len(actions)
                           if all(a in per_action for a in actions) else math.nan)
        rows.append(Row(f"{entry.model_name} (reported)", "reported", values, citation_key(entry.result)))
    return rows


def _caption(members: list[Entry], metric: str, options: TableOptions) -> str:
    result = members[0].result
    conv = result["conventions"]
    subjects = ", ".join(f"S{s}" for s in conv["test_subjects"])
    parts = [f"Human3.6M Protocol {conv['protocol']} (3DMPPE naming), {METRIC_LABELS[metric]} (mm) per action",
             f"test subjects {subjects}, every {conv['frame_stride']}th frame"]
    if result["kind"] == "pose":
        parts += [f"{len(conv['joints_evaluated'])} joints, root-relative (root {conv['root_joint']})",
                  f"alignment: {conv['alignment'].get(metric, 'none')}"]
    else:
        parts.append(f"the root joint ({conv['root_joint']}) in absolute camera coordinates, no alignment")
    parts.append(f"boxes and roots: {report.source_label(result)}"
                 + ("; roots: the model's output" if result["kind"] == "root" else ""))
    flips: dict[str, list[str]] = {}
    for entry in members:
        flips.setdefault({True: "on", False: "off"}.get(entry.result["conventions"].get("flip_test"), "unknown"),
                         []).append(entry.name)
    parts.append("flip test: " + (next(iter(flips)) if len(flips) == 1 else "mixed (" + "; ".join(
        f"{word}: {', '.join(names)}" for word, names in flips.items()) + ")"))
    if options.average == "total":
        joints = f" × {len(conv['joints_evaluated'])} joints" if result["kind"] == "pose" else ""
        parts.append(f"Avg.: the official total, the mean over all samples{joints}")
    else:
        parts.append("Avg.: the unweighted mean of the 15 action columns, not the official total")
    if conv.get("protocol_note"):
        parts.append(f"not comparable with Protocol 1/2 papers: {conv['protocol_note']}")
    order = "the papers' order" if options.action_order == "paper" else "the official action-index order"
    return ("; ".join(parts) + f". Actions in {order}. {RANKING_RULE} Reported rows: the published values, as "
            "the papers print them.")


def _slug(result: dict, metric: str) -> str:
    conv = result["conventions"]
    setting = f"{conv['bbox_source']}_boxes" + ("" if result["kind"] == "root" else f"_{conv['root_source']}_roots")
    text = f"protocol{conv['protocol']}_{metric}_{setting}"
    if conv.get("protocol_note"):
        text += "_other_protocol"
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def build_tables(entries: list[Entry], options: TableOptions | None = None) -> list[PaperTable]:
    """One table per leaderboard group and metric, rows in leaderboard order, reported rows last."""
    options = options or TableOptions()
    actions = ACTION_ORDERS[options.action_order]
    columns = (*(ACTION_ABBREVIATIONS[a] for a in actions), AVG)
    tables, slugs = [], set()
    for group in dict.fromkeys(e.group for e in entries):
        members = [e for e in entries if e.group == group]
        headline = members[0].result["headline"]["metric"]
        extra = [m for m in options.metrics if m != headline and all(m in e.result["metrics"] for e in members)]
        for metric in (headline, *extra):
            rows = [Row(e.name, "measured", _measured_values(e.result, metric, actions, options.average),
                        citation_key(e.result), _flags(e), e.result_name) for e in members]
            if options.reported and metric == headline:
                rows += _reported_rows(members, actions, options.average)
            slug = base = _slug(members[0].result, metric)
            count = 1
            while slug in slugs:
                count += 1
                slug = f"{base}_{count}"
            slugs.add(slug)
            title = f"{group}: {METRIC_LABELS[metric]} per action" if metric != headline else f"{group}, per action"
            table = PaperTable(slug, title, _caption(members, metric, options), group, metric, columns, rows)
            table.marks = rank_marks(rows, columns)
            tables.append(table)
    return tables


# --------------------------------------------------------------------------------------------- rendering
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "–": "--", "—": "---"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def _cell(value, mark: str | None, style: str) -> str:
    printed = display_value(value)
    if math.isnan(printed):
        return MISSING[style]
    text = f"{printed:.{DECIMALS}f}"
    if mark is None:
        return text
    if style == "latex":
        return rf"\textbf{{{text}}}" if mark == "best" else rf"\underline{{{text}}}"
    return f"**{text}**" if mark == "best" else f"<u>{text}</u>"


def _row_name(row: Row, style: str) -> str:
    if style == "latex":
        name = latex_escape(row.name)
        if row.flags:
            name += "$^{" + "".join(FLAGS[f][0] for f in row.flags) + "}$"
        return name + (rf" \cite{{{row.citation_key}}}" if row.citation_key else "")
    return row.name.replace("|", "\\|") + "".join(FLAGS[f][1] for f in row.flags)


def _comment(text: str, width: int = 110) -> list[str]:
    import textwrap

    return [f"% {line}" for line in textwrap.wrap(text, width)]


def latex_tabular(table: PaperTable) -> str:
    """A booktabs tabular to `\\input` inside one's own table environment (caption in the comment above)."""
    width = len(table.columns) + 1
    lines = ["% " + table.title, *_comment("Caption: " + table.caption),
             "% Values: result.json, mm, printed with one decimal. Requires \\usepackage{booktabs}.",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(["Method", *(latex_escape(c) for c in table.columns)]) + r" \\", r"\midrule"]
    previous = "measured"
    for i, row in enumerate(table.rows):
        if row.source != previous:
            lines.append(r"\midrule")
            previous = row.source
        cells = [_cell(row.values.get(c, math.nan), table.marks.get((i, c)), "latex") for c in table.columns]
        lines.append(" & ".join([_row_name(row, "latex"), *cells]) + r" \\")
    lines.append(r"\bottomrule")
    for flag in table.flags:
        lines.append(rf"\multicolumn{{{width}}}{{l}}{{\footnotesize $^{{{FLAGS[flag][0]}}}$ "
                     rf"{latex_escape(FLAGS[flag][2])}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def markdown_table(table: PaperTable) -> str:
    lines = ["| " + " | ".join(["Method", *table.columns]) + " |",
             "|---|" + "|".join("---:" for _ in table.columns) + "|"]
    for i, row in enumerate(table.rows):
        cells = [_cell(row.values.get(c, math.nan), table.marks.get((i, c)), "markdown") for c in table.columns]
        lines.append("| " + " | ".join([_row_name(row, "markdown"), *cells]) + " |")
    legend = "; ".join(f"{FLAGS[f][1]} {FLAGS[f][2]}" for f in table.flags)
    return "\n".join(lines) + ("\n\n" + legend if legend else "") + "\n"


def markdown_document(table: PaperTable) -> str:
    """The Markdown table with its title and caption (the `.md` file, the consolidation notebook)."""
    return f"**{table.title}.** {table.caption}\n\n{markdown_table(table)}"


def csv_table(table: PaperTable) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Method", "Source", "Citation", "Flags", *table.columns, "Bold", "Underlined"])
    for i, row in enumerate(table.rows):
        marked = {m: ";".join(c for c in table.columns if table.marks.get((i, c)) == m) for m in ("best", "second")}
        writer.writerow([row.name, row.source, row.citation_key or "", ";".join(row.flags),
                         *(_cell(row.values.get(c, math.nan), None, "csv") for c in table.columns),
                         marked["best"], marked["second"]])
    return out.getvalue()


def standalone_document(tables: list[PaperTable], bibliography: str | None) -> str:
    """`tables.tex`: every table in a `table` environment with its caption; compiles with pdflatex as is."""
    lines = ["% Every per-action table of this report: pdflatex tables.tex (for the references: bibtex tables,",
             "% then pdflatex twice). Each <name>.tex beside it is a booktabs tabular to \\input into your own table.",
             r"\documentclass{article}", r"\usepackage[landscape,margin=1.5cm]{geometry}", r"\usepackage{booktabs}",
             r"\usepackage{graphicx}", r"\begin{document}", r"\section*{Human3.6M per-action tables}"]
    if not tables:
        lines.append("No valid result was found.")
    for table in tables:
        lines += [r"\begin{table}[htbp]", r"\centering",
                  rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
                  rf"\label{{tab:{table.slug}}}", rf"\resizebox{{\linewidth}}{{!}}{{\input{{{table.slug}.tex}}}}",
                  r"\end{table}"]
    if bibliography and any(row.citation_key for table in tables for row in table.rows):
        lines += [r"\bibliographystyle{plain}", rf"\bibliography{{{bibliography}}}"]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


def references(entries: list[Entry]) -> tuple[str, list[str]]:
    """references.bib: one entry per paper of the families compared (families sharing a paper share its entry),
    in leaderboard order; and the problems found (an unusable citation, one key for two different entries)."""
    chosen: dict[str, str] = {}
    without: list[str] = []
    problems: list[str] = []
    for entry in entries:
        family = (entry.result.get("model") or {}).get("family") or entry.result_name
        text = citation_of(entry.result).strip()
        if not text:
            without.append(family)
            continue
        try:
            key = parse_entry(text).key
        except ValueError as exc:
            problems.append(f"the citation of family `{family}` is not usable BibTeX ({exc}); it is not in "
                            f"{REFERENCES_FILE}")
            continue
        if key in chosen and chosen[key] != text:
            problems.append(f"two different BibTeX entries use the key `{key}`; {REFERENCES_FILE} keeps the first")
        chosen.setdefault(key, text)
    lines = ["% References of the model families compared in this report (written by helpers.consolidate).",
             "% One entry per paper; the per-action tables \\cite these keys."]
    without = list(dict.fromkeys(without))
    if without:
        lines.append(f"% Families without a citation: {', '.join(without)}.")
    text = "\n".join(lines) + "\n" + "".join(f"\n{entry}\n" for entry in chosen.values())
    return text, list(dict.fromkeys(problems))


def write_tables(tables: list[PaperTable], out_dir: str | Path, bibliography: str | None = None) -> dict:
    """Write `<slug>.tex`, `<slug>.md`, `<slug>.csv` per table and `tables.tex` into `out_dir`, atomically.
    `bibliography`: the .bib file for tables.tex, relative to `out_dir` and without its extension."""
    out_dir = Path(out_dir)
    files = {}
    for table in tables:
        files[f"{table.slug}.tex"] = write_text(out_dir / f"{table.slug}.tex", latex_tabular(table))
        files[f"{table.slug}.md"] = write_text(out_dir / f"{table.slug}.md", markdown_document(table))
        files[f"{table.slug}.csv"] = write_text(out_dir / f"{table.slug}.csv", csv_table(table))
    files[STANDALONE_FILE] = write_text(out_dir / STANDALONE_FILE, standalone_document(tables, bibliography))
    return files
