"""The docs render as written and their commands are commands the CLI accepts.

README.md (and the other top-level guides) are parsed with markdown-it-py as CommonMark, the way
GitHub renders them: every fence closes and swallows no heading, every `#anchor` names a heading
and every relative link names a file. Then each `swarm …` line of README.md's shell blocks is
parsed by the real CLI's click command (`typer.main.get_command`), without running anything: the
verb path exists and every option given is one that verb takes, with a value where it needs one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import typer.main
from markdown_it import MarkdownIt
from markdown_it.token import Token

from swarm.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "runtime" / "sdk" / "README.md", ROOT / "runtime" / "ABI.md"]
#: Info strings of the blocks whose lines are shell commands.
SHELL = frozenset({"bash", "sh", "shell", "console"})
#: What stands for a value the reader fills in, e.g. `<sha256 printed above>`.
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
#: What shlex returns between two commands of a line (`|`, `&&`, `;`, `$(`…`)`).
CONTROL = frozenset("();<>|&")
ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def parse(path: Path) -> list[Token]:
    return MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))


def inline_text(token: Token) -> str:
    """The text a heading renders: its words and code spans, without markup."""
    return "".join(
        child.content for child in token.children or [] if child.type in ("text", "code_inline")
    )


def github_slug(text: str) -> str:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(tokens: list[Token]) -> set[str]:
    """Every heading's anchor; a repeated heading gets `-1`, `-2`, … as on GitHub."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for index, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        slug = github_slug(inline_text(tokens[index + 1]))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(tokens: list[Token]) -> Iterator[tuple[int, str]]:
    """(line, href) of every link."""
    for token in tokens:
        if token.type != "inline":
            continue
        for child in token.children or []:
            if child.type == "link_open":
                line = (token.map or [0])[0] + 1
                yield line, str(child.attrs.get("href", ""))


# --- CommonMark structure ------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fence_closes_and_swallows_nothing(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    problems = []
    for token in parse(path):
        if token.type != "fence" or token.map is None:
            continue
        start, end = token.map
        last = lines[end - 1].strip() if end - 1 > start else ""
        closed = last.startswith(token.markup) and set(last) == {token.markup[0]}
        if not closed:
            problems.append(f"line {start + 1}: the {token.markup} fence never closes")
        for offset, line in enumerate(token.content.splitlines()):
            if line.lstrip().startswith(("```", "~~~")):
                problems.append(
                    f"line {start + 2 + offset}: a fence inside the code block opened at line "
                    f"{start + 1} (an unclosed or stray fence above it)"
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_heading_renders_as_a_heading(path: Path) -> None:
    """A `## Title` line that ends up inside a code block is a section lost from the page.

    Lines of blocks tagged with a language (a shell comment may start with `#`) are not
    headings; untagged blocks (diagrams) must hold none either.
    """
    tokens = parse(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    code_lines: set[int] = set()
    for token in tokens:
        if token.type in ("fence", "code_block") and token.info.strip() and token.map:
            code_lines.update(range(token.map[0], token.map[1]))
    rendered = {
        token.map[0] for token in tokens if token.type == "heading_open" and token.map is not None
    }
    missing = [
        f"line {n + 1}: {line}"
        for n, line in enumerate(lines)
        if ATX_HEADING.match(line) and n not in code_lines and n not in rendered
    ]
    assert not missing, "headings that do not render as headings:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(path: Path) -> None:
    tokens = parse(path)
    own = anchors(tokens)
    broken = []
    for line, href in links(tokens):
        parts = urlsplit(href)
        if parts.scheme or href.startswith("//"):
            continue  # the web: not checked offline
        if not parts.path:
            if parts.fragment not in own:
                broken.append(f"line {line}: #{parts.fragment} names no heading")
            continue
        target = (path.parent / unquote(parts.path)).resolve()
        if not target.exists():
            broken.append(f"line {line}: {href} does not exist")
        elif (
            parts.fragment
            and target.suffix == ".md"
            and parts.fragment not in anchors(parse(target))
        ):
            broken.append(f"line {line}: {href}: no such heading in {target.name}")
    assert not broken, "\n".join(broken)


def test_slugs_follow_githubs_rule() -> None:
    assert github_slug("Autoscaling and task queues") == "autoscaling-and-task-queues"
    assert github_slug("The scheduler's market") == "the-schedulers-market"
    assert github_slug("HTTP API") == "http-api"
    assert github_slug("`swarm_agent.testing`: local runs") == "swarm_agenttesting-local-runs"
    assert anchors(MarkdownIt("commonmark").parse("# A\n\n## A\n")) == {"a", "a-1"}


# --- Commands against the CLI --------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    line: int
    text: str
    argv: list[str]
    #: Why the line cannot even be split into words (an unbalanced quote).
    unreadable: str | None = None


def shell_lines(tokens: list[Token]) -> Iterator[tuple[int, str]]:
    """(line, command) of every shell block, `\\` continuations joined, `$ ` prompts dropped."""
    for token in tokens:
        info = token.info.strip().split(maxsplit=1)
        if token.type != "fence" or not info or info[0] not in SHELL or token.map is None:
            continue
        pending, first = "", 0
        for offset, raw in enumerate(token.content.splitlines()):
            if not pending:
                first = token.map[0] + 2 + offset
            text = raw.removeprefix("$ ") if info[0] == "console" else raw
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            yield first, pending + text
            pending = ""
        if pending:
            yield first, pending


def invocations(path: Path) -> Iterator[Invocation]:
    """Every `swarm …` command of the file's shell blocks, as the argv after `swarm`.

    A line may hold several commands (`A | B`, `X=$(swarm …)`); only those that run `swarm`
    count. Placeholders such as `<sha256 printed above>` stand for one word.
    """
    for line, text in shell_lines(parse(path)):
        filled = PLACEHOLDER.sub("PLACEHOLDER", text)
        lexer = shlex.shlex(filled, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words as the shell splits them; `|`, `&&`, `(` apart
        try:
            tokens = list(lexer)
        except ValueError as exc:  # an unbalanced quote: a shell would not run it either
            yield Invocation(line, text, [], unreadable=str(exc))
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token and set(token) <= CONTROL:
                while segment and ENV_ASSIGNMENT.match(segment[0]):
                    segment.pop(0)
                if segment and Path(segment[0]).name == "swarm":
                    yield Invocation(line, shlex.join(segment), segment[1:])
                segment = []
            else:
                segment.append(token)


def check(argv: list[str]) -> str | None:
    """Why the CLI would refuse `swarm ARGV` before running it, or None when it parses.

    Walks the click command typer builds, as click's parser does: a group's options, then its
    subcommand; a verb's options (with their values) and its arguments. Only the syntax is
    judged: values are not converted and nothing runs.
    """
    command: Any = typer.main.get_command(app)
    path = ["swarm"]
    words = list(argv)
    while True:
        where = f"`{' '.join(path)}`"
        options = {
            opt: param
            for param in command.params
            if param.param_type_name == "option"
            for opt in (*param.opts, *param.secondary_opts)
        }
        subcommands = getattr(command, "commands", None)
        positionals: list[str] = []
        descended = False
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if word == "--":
                positionals += words[index:]
                break
            if word.startswith("-") and word != "-":
                name, has_value, _ = word.partition("=")
                if name == "--help":
                    continue
                param = options.get(name)
                if param is None:
                    return f"{where} has no option {name}"
                takes = 0 if param.is_flag or param.count else param.nargs
                if has_value and takes != 1:
                    return f"{where}: {name} takes no value"
                if not has_value:
                    if index + takes > len(words):
                        return f"{where}: {name} needs a value"
                    index += takes
                continue
            if subcommands is not None:
                if word not in subcommands:
                    return f"{where} has no subcommand {word!r}"
                command, words, descended = subcommands[word], words[index:], True
                path.append(word)
                break
            positionals.append(word)
        if descended:
            continue
        if subcommands is not None:
            return None if command.invoke_without_command else f"{where} needs a subcommand"
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        required = sum(p.nargs for p in arguments if p.required)
        most = None if any(p.nargs < 0 for p in arguments) else sum(p.nargs for p in arguments)
        if len(positionals) < required:
            return f"{where} needs {required} argument(s), got {positionals}"
        if most is not None and len(positionals) > most:
            return f"{where} takes {most} argument(s), got {positionals}"
        return None


def readme_invocations() -> list[Invocation]:
    return list(invocations(ROOT / "README.md"))


def test_the_readme_has_commands_to_check() -> None:
    found = readme_invocations()
    assert len(found) >= 25
    verbs = {tuple(i.argv[:2]) for i in found}
    assert ("agent", "deploy") in verbs
    assert ("timeline", "export") in verbs


@pytest.mark.parametrize("invocation", readme_invocations(), ids=lambda i: f"L{i.line}")
def test_readme_command_parses(invocation: Invocation) -> None:
    problem = invocation.unreadable or check(invocation.argv)
    assert problem is None, f"README.md line {invocation.line}: {invocation.text}\n{problem}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("swarm agent ls -A", None),
        ("swarm timeline --at 1234 -o json", None),
        ("swarm agent deploy x --wait --label a=b --label=c=d -- -x", "takes 1 argument"),
        ("swarm agent nosuchverb x", "`swarm agent` has no subcommand 'nosuchverb'"),
        ("swarm agent deploy x --no-such-option 1", "has no option --no-such-option"),
        ("swarm agent scale x --replicas", "--replicas needs a value"),
        ("swarm agent deploy x --wait=yes", "--wait takes no value"),
        ("swarm agent send", "needs 2 argument(s)"),
        ("swarm agent", "`swarm agent` needs a subcommand"),
    ],
)
def test_the_check_refuses_what_the_cli_refuses(line: str, expected: str | None) -> None:
    problem = check(shlex.split(line)[1:])
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert expected in problem


def test_lines_that_do_not_run_swarm_are_skipped(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "scripts/up   # swarm agent ls\n"
        "curl -d '{\"a\": 1}' http://x   # not swarm\n"
        "SHA=$(swarm module push f.wasm -o json | jq -r .sha256)\n"
        "swarm agent deploy c --module-sha256 <sha256 printed above> \\\n"
        "  --wait   # a comment\n"
        "```\n"
        "```python\nswarm = 1\n```\n"
    )
    found = [(i.line, i.argv) for i in invocations(doc)]
    assert found == [
        (4, ["module", "push", "f.wasm", "-o", "json"]),
        (5, ["agent", "deploy", "c", "--module-sha256", "PLACEHOLDER", "--wait"]),
    ]
