"""The README as a reader follows it: its layout names the code that exists, and its commands
run as written on a fresh clone after `make install` or `make serve`."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _layout() -> str:
    section = README.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_layout_names_every_module() -> None:
    layout = _layout()
    modules = [
        path
        for folder in ("app", "app/core", "training")
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "__init__.py"
    ]
    assert modules
    missing = [
        str(path.relative_to(ROOT))
        for path in modules
        if not re.search(rf"(?m)^\s+{re.escape(path.name)}\s", layout)
    ]
    assert not missing, f"modules the README's Layout does not name: {missing}"


def _shell_commands() -> list[str]:
    """The README's shell commands: each line of its sh and bash blocks (a here-document with
    its body), and each inline code span that starts with python."""
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", README, re.DOTALL):
        lines = block.splitlines()
        while lines:
            line = lines.pop(0)
            heredoc = re.search(r"<<\s*'?(\w+)'?", line)
            if heredoc:
                end = lines.index(heredoc.group(1))
                line = "\n".join([line, *lines[:end]])
                del lines[: end + 1]
            commands.append(line)
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    commands += [span for span in re.findall(r"`([^`]+)`", prose) if span.startswith("python")]
    return commands


def test_commands_that_need_the_projects_packages_run_the_venvs_python() -> None:
    """`make install` and `make serve` put numpy, torch and the project into .venv, not into the
    system's python3: a command that imports numpy or runs the training package, copied as
    written, must name .venv/bin/python."""
    commands = _shell_commands()
    assert any(".venv/bin/python" in command for command in commands)
    wrong = [
        command
        for command in commands
        if re.match(r"python3?\s", command) and re.search(r"\bnumpy\b|-m training\.\w+ -", command)
    ]
    assert not wrong, f"commands that need .venv/bin/python: {wrong}"


def test_the_quick_start_says_what_make_test_installs() -> None:
    """`make test` first installs the Debian packages its browser and load-balancer tests run
    (with apt-get: as root) when they are missing; without root it stops there."""
    makefile = (ROOT / "Makefile").read_text()
    prerequisites = re.search(r"(?m)^test: (.*?)\s*##", makefile).group(1).split()
    debian = {
        target: re.search(rf"(?m)^{target}:.*## Debian's (\S+)", makefile)
        for target in prerequisites
        if not target.startswith("$(")
    }
    assert debian and all(debian.values()), debian
    # the make test line and the comment lines that continue it
    quick_start = re.search(r"(?m)^make test .*(\n +#.*)*", README.split("\n## Quick start\n", 1)[1]).group(0)
    missing = [m.group(1) for m in debian.values() if m.group(1) not in quick_start]
    assert not missing, f"the Quick start's make test line does not say it installs {missing}"
    assert "apt-get" in quick_start


def test_the_readme_holds_no_html_comments() -> None:
    """A comment is not rendered: what it says either belongs in the text or nowhere."""
    assert "<!--" not in README
