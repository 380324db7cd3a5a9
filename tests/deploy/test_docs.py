"""The README and docs/ read as a newcomer needs them (issue 18 item 6), and stay true to the code.

README.md is the ten-minute page; the depth lives in docs/*.md. Both keep to 120 columns, every table row has its
header's cell count, every relative link (and its #anchor) resolves, and every setting appears in the README's
table and in docs/configuration.md with the default the code has.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from config.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
WIDTH = 120
LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^\s*```")
DATADOG_GUIDE = "https://docs.datadoghq.com/real_user_monitoring/correlate_with_other_telemetry/llm_observability/"


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in prose_lines(path.read_text()):
        if match := re.match(r"^#{1,6} (.+)$", line):
            title = "".join(c for c in match.group(1).lower() if unicodedata.category(c)[0] in "LN" or c in " -_")
            found.add(title.replace(" ", "-"))
    return found


def table_rows(text: str) -> list[list[list[str]]]:
    """Each table of the page as rows of cells (header first, separator row dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*prose_lines(text), ""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
                current.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_line_is_wider_than_120_columns(page: Path) -> None:
    wide = [(n, len(line)) for n, line in enumerate(page.read_text().splitlines(), 1) if len(line) > WIDTH]
    assert not wide, f"{page_id(page)}: lines over {WIDTH} columns (line, width): {wide}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_table_row_has_its_headers_cell_count(page: Path) -> None:
    for table in table_rows(page.read_text()):
        header = table[0]
        odd = [row for row in table[1:] if len(row) != len(header)]
        assert not odd, f"{page_id(page)}: rows whose cell count differs from the header {header}: {odd}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for match in LINK.finditer("\n".join(prose_lines(page.read_text()))):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{page_id(page)}: links that lead nowhere: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_dangling_reference_to_a_file_outside_the_repository(page: Path) -> None:
    assert "see REFERENCE" not in page.read_text(), "REFERENCE.md is not part of the repository"


def test_datadogs_guide_is_a_link_wherever_the_readme_names_it() -> None:
    text = README.read_text()
    mentions = re.findall(r"Datadog's guide(.{0,9})", text.replace("\n", " "))
    assert mentions, "the README points to Datadog's guide"
    assert all(after.startswith("][guide]") for after in mentions), mentions
    assert f"[guide]: {DATADOG_GUIDE}" in text


def shown_default(name: str) -> str:
    """A setting's default as the docs write it: `true`, `5`, `body,query,...`; *(required)* when there is none."""
    field = Settings.model_fields[name]
    default = field.default
    if default is PydanticUndefined:
        return "*(required)*"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        return "`" + ",".join(str(item.value if isinstance(item, enum.Enum) else item) for item in default) + "`"
    if isinstance(default, enum.Enum):
        return f"`{default.value}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


SETTINGS = sorted(Settings.model_fields)


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_is_in_the_readme_table_with_its_default(name: str) -> None:
    variable = f"`{ENV_PREFIX}{name.upper()}`"
    rows = [row for table in table_rows(README.read_text()) for row in table if row and row[0] == variable]
    assert rows, f"{variable} is missing from the README's configuration table"
    assert rows[0][1] == shown_default(name), f"{variable}: the README says {rows[0][1]}"


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_is_in_docs_configuration_with_its_default(name: str) -> None:
    variable = f"`{ENV_PREFIX}{name.upper()}`"
    entries = [line for line in CONFIGURATION.read_text().splitlines() if line.startswith(f"- {variable} — ")]
    assert entries, f"{variable} is missing from docs/configuration.md"
    assert entries[0].startswith(f"- {variable} — default {shown_default(name)}."), entries[0]


def test_the_readme_links_every_docs_page() -> None:
    text = README.read_text()
    unlinked = [page_id(page) for page in PAGES[1:] if f"]({page_id(page)})" not in text]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
