"""Kconfig fragments: parse, merge, and prove the requested options reached the final .config.

Mirrors KUnit's `kunit_config.py`: a fragment is a set of `CONFIG_X=value` / `# CONFIG_X is not
set` lines; after `olddefconfig` every requested option must be in the final `.config`
(`=n` is satisfied by absence). Unlike KUnit, a failure is explained from the Kconfig sources:
an option no Kconfig file defines is named as such (with close spellings), and an option that
did not stick is shown with its `depends on` lines and the values their symbols ended up with.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import KconfigError

_OPTION_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_NOT_SET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_VALUE_RE = re.compile(r'^(y|m|n|-?[0-9]+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')


@dataclass(frozen=True)
class Option:
    """One requested option. `value` is as written in a .config: y, m, n, a number or a string."""

    name: str
    value: str
    origin: str

    def line(self) -> str:
        if self.value == "n":
            return f"# CONFIG_{self.name} is not set"
        return f"CONFIG_{self.name}={self.value}"


@dataclass(frozen=True)
class Fragment:
    origin: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Conflict:
    """Two fragments set one option to different values; the later one wins."""

    name: str
    earlier: Option
    later: Option

    def describe(self) -> str:
        return (
            f"CONFIG_{self.name} is set to {self.earlier.value} by {self.earlier.origin} and to "
            f"{self.later.value} by {self.later.origin}; using {self.later.value}"
        )


@dataclass(frozen=True)
class MergedConfig:
    """The requested options after merging, later fragments winning, in first-seen order."""

    options: tuple[Option, ...]
    conflicts: tuple[Conflict, ...] = field(default=())

    def text(self) -> str:
        """The merged fragment, one option a line, each with where it came from."""
        lines = []
        for option in self.options:
            lines.append(f"# from {option.origin}")
            lines.append(option.line())
        return "\n".join(lines) + "\n"

    def canonical(self) -> str:
        """Only what changes the kernel: the cache key ignores where options came from."""
        return "".join(option.line() + "\n" for option in self.options)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


def parse_value(name: str, value: str, origin: str) -> str:
    if not _VALUE_RE.match(value):
        raise KconfigError(
            f"{origin}: CONFIG_{name}={value} has a value Kconfig cannot take. Use y, m, n, a "
            f'number or a double-quoted string (for example CONFIG_{name}=y or CONFIG_{name}="text").'
        )
    return value


def parse_fragment(text: str, origin: str) -> Fragment:
    """Parse a fragment; any line that is neither an option, a comment nor blank is an error."""
    options: list[Option] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{origin}:{number}"
        if not line:
            continue
        not_set = _NOT_SET_RE.match(line)
        if not_set:
            options.append(Option(not_set.group(1), "n", where))
            continue
        if line.startswith("#"):
            continue
        match = _OPTION_RE.match(line)
        if not match:
            raise KconfigError(
                f"{where}: cannot parse {raw!r}. A fragment line is CONFIG_NAME=value, "
                f"'# CONFIG_NAME is not set', a # comment or blank; fix or remove that line."
            )
        name, value = match.group(1), match.group(2)
        options.append(Option(name, parse_value(name, value, where), where))
    return Fragment(origin, tuple(options))


def parse_fragment_file(path: Path, display: str | None = None) -> Fragment:
    try:
        text = path.read_text()
    except OSError as err:
        raise KconfigError(
            f"Cannot read Kconfig fragment {path}: {err.strerror}. Pass an existing file to --config."
        ) from err
    return parse_fragment(text, display or str(path))


def parse_option_argument(spec: str) -> Option:
    """`--kconfig CONFIG_X=y`, `--kconfig X=y` or `--kconfig CONFIG_X=n`."""
    origin = f"--kconfig {spec}"
    body = spec[len("CONFIG_"):] if spec.startswith("CONFIG_") else spec
    name, sep, value = body.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise KconfigError(
            f"{origin}: expected CONFIG_NAME=value, for example --kconfig CONFIG_NUMA_BALANCING=y "
            f"or --kconfig CONFIG_DEBUG_VM=n."
        )
    return Option(name, parse_value(name, value, origin), origin)


def merge(fragments: Iterable[Fragment]) -> MergedConfig:
    """Merge in order; a later value wins, and every disagreement is recorded as a Conflict."""
    current: dict[str, Option] = {}
    conflicts: list[Conflict] = []
    for fragment in fragments:
        for option in fragment.options:
            earlier = current.get(option.name)
            if earlier is not None and earlier.value != option.value:
                conflicts.append(Conflict(option.name, earlier, option))
            if earlier is None:
                current[option.name] = option
            else:
                # Keep first-seen order so the merged text stays stable, take the new value.
                current[option.name] = option
    return MergedConfig(tuple(current.values()), tuple(conflicts))


def parse_dotconfig(text: str) -> dict[str, str]:
    """Name -> value of a .config; `is not set` lines become 'n'."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        not_set = _NOT_SET_RE.match(line.strip())
        if not_set:
            values[not_set.group(1)] = "n"
            continue
        match = _OPTION_RE.match(line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


def unmet_options(requested: Sequence[Option], final: Mapping[str, str]) -> list[Option]:
    """KUnit's subset rule: each requested option has its value in the final config."""
    missing = []
    for option in requested:
        actual = final.get(option.name, "n")
        if option.value == "n":
            if actual != "n":
                missing.append(option)
        elif actual != option.value:
            missing.append(option)
    return missing


# --- Explaining failures from the Kconfig sources -------------------------------------------

_DEFINE_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_ATTR_RE = re.compile(r"^\s+(depends\s+on|select|imply|bool|tristate|int|hex|string|prompt|def_bool|def_tristate)\b(.*)$")
_IF_RE = re.compile(r"^if\s+(.+)$")
_SYMBOL_IN_EXPR_RE = re.compile(r"(!?)\s*\b([A-Z][A-Z0-9_]+)\b")


@dataclass(frozen=True)
class SymbolDefinition:
    name: str
    location: str
    depends: tuple[str, ...]
    has_prompt: bool


@dataclass(frozen=True)
class KconfigIndex:
    """Every `config NAME` in a kernel tree (x86 plus generic code), who depends and who selects."""

    definitions: Mapping[str, tuple[SymbolDefinition, ...]]
    selected_by: Mapping[str, tuple[str, ...]]

    @classmethod
    def scan(cls, srctree: Path, arch: str = "x86") -> KconfigIndex:
        definitions: dict[str, list[SymbolDefinition]] = {}
        selected_by: dict[str, list[str]] = {}
        for path in sorted(srctree.rglob("Kconfig*")):
            rel = path.relative_to(srctree)
            if rel.parts[0] == "arch" and len(rel.parts) > 1 and rel.parts[1] != arch:
                continue
            if not path.is_file() or rel.parts[0] in ("Documentation", "tools", "scripts"):
                continue
            _scan_file(path, str(rel), definitions, selected_by)
        return cls(
            {name: tuple(defs) for name, defs in definitions.items()},
            {name: tuple(sorted(set(who))) for name, who in selected_by.items()},
        )

    def explain_missing(self, option: Option, final: Mapping[str, str]) -> str:
        """One paragraph saying why `option` is not in the final config and what to do."""
        name = option.name
        actual = final.get(name, "n")
        defs = self.definitions.get(name)
        if not defs:
            close = difflib.get_close_matches(name, list(self.definitions), n=3, cutoff=0.8)
            hint = f" Did you mean {', '.join('CONFIG_' + c for c in close)}?" if close else ""
            return (
                f"CONFIG_{name} (from {option.origin}) does not exist: no Kconfig file of this "
                f"kernel source (x86 and generic code) defines `config {name}`.{hint} Fix the "
                f"spelling or drop the option."
            )
        parts = [
            f"CONFIG_{name}={option.value} (from {option.origin}) did not stick: the final .config "
            f"has {'it unset' if actual == 'n' else f'CONFIG_{name}={actual}'}."
        ]
        for definition in defs:
            if definition.depends:
                unmet = _unmet_symbols(definition.depends, final)
                deps = " && ".join(f"({d})" if "||" in d else d for d in definition.depends)
                unmet_text = (
                    f"; of these, {', '.join(f'{s}={v}' for s, v in unmet)}"
                    if unmet
                    else ""
                )
                parts.append(f"{definition.location}: depends on {deps}{unmet_text}.")
            if not definition.has_prompt:
                who = self.selected_by.get(name, ())
                selectors = f" (selected by {', '.join(who[:6])})" if who else ""
                parts.append(
                    f"{definition.location}: it has no prompt, so it can only be turned on by "
                    f"another option that selects it{selectors}."
                )
        parts.append(
            "Enable the missing dependencies in the same fragment (or request the option that "
            "selects it), or drop the option."
        )
        return " ".join(parts)


def _scan_file(
    path: Path,
    rel: str,
    definitions: dict[str, list[SymbolDefinition]],
    selected_by: dict[str, list[str]],
) -> None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    if_stack: list[str] = []
    current: str | None = None
    current_line = 0
    depends: list[str] = []
    has_prompt = False

    def finish() -> None:
        if current is not None:
            definitions.setdefault(current, []).append(
                SymbolDefinition(current, f"{rel}:{current_line}", tuple(if_stack + depends), has_prompt)
            )

    for number, line in enumerate(lines, start=1):
        define = _DEFINE_RE.match(line)
        if define:
            finish()
            current, current_line, depends, has_prompt = define.group(1), number, [], False
            continue
        if current is not None:
            attr = _ATTR_RE.match(line)
            if attr:
                keyword, rest = attr.group(1), attr.group(2).strip()
                if keyword.startswith("depends"):
                    depends.append(_strip_comment(rest))
                elif keyword in ("select", "imply"):
                    target = rest.split()[0] if rest.split() else ""
                    if keyword == "select" and target:
                        selected_by.setdefault(target, []).append(current)
                elif keyword in ("bool", "tristate", "int", "hex", "string", "prompt"):
                    has_prompt = has_prompt or '"' in rest
                continue
            if line and not line[0].isspace():
                finish()
                current = None
        _track_if(line, if_stack)
    finish()


def _track_if(line: str, if_stack: list[str]) -> None:
    """Keep the stack of enclosing `if` conditions (they add to every inner option's dependencies)."""
    if line[:1].isspace():
        return
    stripped = line.strip()
    cond = _IF_RE.match(stripped)
    if cond:
        if_stack.append(_strip_comment(cond.group(1)))
    elif stripped == "endif" and if_stack:
        if_stack.pop()


def _strip_comment(text: str) -> str:
    return text.split("#", 1)[0].strip()


def _unmet_symbols(exprs: Sequence[str], final: Mapping[str, str]) -> list[tuple[str, str]]:
    """Symbols of `depends on` expressions whose final value fails them (a hint, not a full
    evaluation of the expression): `X` with X=n, or `!X` with X set."""
    seen: dict[str, str] = {}
    for expr in exprs:
        for negated, symbol in _SYMBOL_IN_EXPR_RE.findall(expr):
            value = final.get(symbol, "n")
            fails = value != "n" if negated else value == "n"
            if fails and symbol not in seen:
                seen[symbol] = value
    return list(seen.items())
