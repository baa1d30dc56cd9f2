"""Just enough of a Dockerfile parser for the tests: stages and their instructions; and the
serving packages the builder stage installs (requirements-serve.txt)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV, ...
    flags: list[str]  # leading --name=value options, e.g. --mount=... or --from=builder
    args: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str]:
        """The JSON array of CMD / ENTRYPOINT / HEALTHCHECK CMD."""
        return list(json.loads(self.args.removeprefix("CMD").strip()))

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the legacy `ENV key value` form is not used here)."""
        return dict(pair.split("=", 1) for pair in shlex.split(self.args))


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name!r}: expected one {keyword}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        return {k: v for i in self.all("ENV") for k, v in i.env().items()}


def _logical_lines(text: str) -> list[str]:
    """Lines joined as Docker joins them (backslash-newline removed); comments dropped, also
    inside a continuation."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.endswith("\\"):
            current += raw[:-1]
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def parse(path: Path) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.lstrip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.lstrip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", rest, re.IGNORECASE)
            assert m, f"every stage must be named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
            stages.append(Stage(m.group(2), base, []))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return stages


def stage(stages: list[Stage], name: str) -> Stage:
    by_name = {s.name: s for s in stages}
    assert name in by_name, f"no stage {name!r} in the Dockerfile (stages: {list(by_name)})"
    return by_name[name]


def serve_pins() -> dict[str, str]:
    """requirements-serve.txt: name -> version, every line an exact pin."""
    pins = {}
    for line in (Path(__file__).resolve().parents[2] / "requirements-serve.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==" and not req.marker, f"not a pin: {line}"
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins
