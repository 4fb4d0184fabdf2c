"""``imgov ... --help`` of every command and group reads cleanly at 80 columns.

Every command of the click tree behind ``streams.cli.main.app`` is rendered as a user sees
it in an 80-column terminal and checked for what makes help hard to read: lines wider than
the terminal, a sentence cut by a line break that the help text itself contains, a word, a
type or a default cut off or folded, text swallowed as markup, an option without help, and
a group listing without a summary.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest
import typer
from rich.cells import cell_len
from rich.console import Console
from typer import rich_utils
from typer.core import TyperCommand, TyperGroup
from typer.testing import CliRunner

from streams.cli.main import app

WIDTH = 80
SENTENCE_ENDS = ".:;!?"

Command = TyperCommand | TyperGroup
Render = Callable[[tuple[str, ...]], str]


def _tree(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Command]]:
    # typer 0.29 carries its own click (typer._click): its classes, not click's.
    assert isinstance(command, TyperCommand | TyperGroup), type(command)
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            if not sub.hidden:
                yield from _tree(sub, (*path, name))


COMMANDS = dict(_tree(typer.main.get_command(app)))
GROUPS = {path: cmd for path, cmd in COMMANDS.items() if isinstance(cmd, TyperGroup)}


def _name(path: tuple[str, ...]) -> str:
    return " ".join(("imgov", *path))


@pytest.fixture
def render(monkeypatch: pytest.MonkeyPatch) -> Render:
    """Returns a function that renders ``imgov PATH --help`` as plain text, 80 columns wide."""
    # typer reads TERMINAL_WIDTH and _TYPER_FORCE_DISABLE_TERMINAL once, when it is imported:
    # patch what it read. rich reads COLUMNS whenever typer makes a console.
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", WIDTH)
    monkeypatch.setattr(rich_utils, "FORCE_TERMINAL", False)
    runner = CliRunner()

    def rendered(path: tuple[str, ...]) -> str:
        result = runner.invoke(
            app, [*path, "--help"], env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH)}
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    return rendered


def broken_sentences(lines: list[str], width: int) -> list[str]:
    """Returns the places where a hard line break, not wrapping, splits a sentence.

    ``lines`` are the text of one column, ``""`` between paragraphs. Wrapping moves a word
    to the next line only when it does not fit; a line that ends mid-sentence although
    the next line's first word would have fit on it was broken by the text itself.
    """
    found = []
    for line, after in itertools.pairwise(lines):
        if not line.strip() or not after.strip():
            continue
        word = after.split()[0]
        mid_sentence = line[-1] not in SENTENCE_ENDS and word[0].islower()
        if mid_sentence and cell_len(line) + 1 + cell_len(word) <= width:
            found.append(f"{line.strip()!r} / {after.strip()!r}")
    return found


def _description(page: str) -> list[str]:
    # Between the usage line and the first panel; typer pads it by one column each side.
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    return [line[1 : WIDTH - 1].rstrip() for line in lines[start:end]]


def _listing(page: str) -> tuple[dict[str, str], list[str], int]:
    """Returns the rows of the Commands panel: summary per name, the column's lines, width."""
    lines = page.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("╭─ Commands"))
    body = list(itertools.takewhile(lambda line: line.startswith("│"), lines[top + 1 :]))
    first = re.match(r"│ \S+\s+", body[0])
    assert first is not None
    column, right = first.end(), WIDTH - 2
    summaries: dict[str, str] = {}
    cells: list[str] = []
    for line in body:
        name = line[2:column].strip()
        if name:
            summaries[name] = ""
            cells.append("")  # a new row is a new paragraph
        current = next(reversed(summaries))
        summaries[current] = f"{summaries[current]} {line[column:right].strip()}".strip()
        cells.append(line[column:right].rstrip())
    return summaries, cells, right - column


def _words(text: str) -> list[str]:
    # What a reader must find: Markdown's escapes and code marks are not shown.
    return [word.replace("\\", "").strip("`") for word in text.split("\f")[0].split()]


def _shown(command: Command) -> list[str]:
    texts = [command.help or ""]
    texts += [getattr(param, "help", None) or "" for param in command.params]
    return [word for text in texts for word in _words(text) if word]


def test_the_check_tells_wrapping_from_hard_breaks() -> None:
    text = (
        "Reads every file at once, merged by event time; joins lineage, computes KPI "
        "windows and breaches, and at the end of input closes every window as final."
    )
    console = Console(width=40, force_terminal=False)
    with console.capture() as capture:
        console.print(text)
    wrapped = [line.rstrip() for line in capture.get().splitlines()]
    assert len(wrapped) > 3 and broken_sentences(wrapped, 40) == []
    hard = text.replace("and at ", "and at\n")
    with console.capture() as capture:
        console.print(hard)
    assert broken_sentences([line.rstrip() for line in capture.get().splitlines()], 40) == [
        "'windows and breaches, and at' / 'the end of input closes every window as'"
    ]


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
def test_help_fits_80_columns(path: tuple[str, ...], render: Render) -> None:
    page = render(path)
    lines = page.splitlines()
    # Panels take the whole width: proof that rich rendered at 80 columns, not narrower.
    borders = [line for line in lines if line.startswith(("╭", "╰"))]
    assert borders and {cell_len(line) for line in borders} == {WIDTH}
    assert [line for line in lines if cell_len(line.rstrip()) > WIDTH] == []


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
def test_no_sentence_is_broken_by_the_help_text(path: tuple[str, ...], render: Render) -> None:
    page = render(path)
    broken = broken_sentences(_description(page), WIDTH - 2)
    if path in GROUPS:
        _, cells, width = _listing(page)
        broken += broken_sentences(cells, width)
    assert broken == [], f"{_name(path)} --help breaks sentences:\n" + "\n".join(broken)


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
def test_every_word_and_type_is_shown_whole(path: tuple[str, ...], render: Render) -> None:
    page = render(path)
    command = COMMANDS[path]
    # Lost to markup ("[default: ...]"), cut off with an ellipsis or folded mid-word.
    missing = [word for word in _shown(command) if word not in page]
    ctx = typer.Context(command, info_name=_name(path))
    types = [
        text
        for param in command.params
        if hasattr(param, "display_type_rich") and (text := param.display_type_rich(ctx))
    ]
    missing += [text for text in types if text not in page]
    assert missing == [], f"{_name(path)} --help does not show: {missing}"
    # rich ends a cell it had to cut (a default value, too) with an ellipsis.
    assert [line for line in page.splitlines() if "…" in line] == []


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
def test_every_argument_and_option_has_help(path: tuple[str, ...]) -> None:
    params = [p for p in COMMANDS[path].params if not getattr(p, "hidden", False)]
    assert [p.name for p in params if not getattr(p, "help", None)] == []


@pytest.mark.parametrize("path", GROUPS, ids=_name)
def test_every_command_has_a_one_sentence_summary(path: tuple[str, ...], render: Render) -> None:
    summaries, _, _ = _listing(render(path))
    group = GROUPS[path]
    assert set(summaries) == set(group.list_commands(typer.Context(group)))
    assert all(summaries.values()), summaries
    for name, summary in summaries.items():
        # One sentence: no sentence ends before the last character.
        assert not re.search(r"[.!?]\s+\S", summary), f"{_name((*path, name))}: {summary!r}"
