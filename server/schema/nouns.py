"""Typed noun definitions, loaded from the schema folders and checked against each other."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import SchemaError
from .notation import FIELD_NAME, NOUN_NAME, FieldSpec, NotationError, ReverseSpec, VerbSpec, parse_entry

log = logging.getLogger(__name__)

RESERVED_NOUNS = ("Event", "Schema")
RESERVED_FIELDS = ("rollbackTo", "revertOf")  # the markers of rollback and revert events in `data`
TEXT_TYPES = ("string", "text", "email", "url")


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    array: bool = False
    indexed: bool = False
    unique: bool = False
    default: Any = None
    enum: tuple[str, ...] | None = None
    relation: str | None = None
    reverse_name: str | None = None

    @property
    def searchable(self) -> bool:
        """Part of the noun's full-text body."""
        return self.type in TEXT_TYPES and self.enum is None and self.relation is None

    def describe(self) -> str:
        if self.relation:
            kind = f"-> {self.relation}"
        elif self.enum:
            kind = " | ".join(self.enum)
        else:
            kind = self.type
        kind += "[]" if self.array else ""
        flags = [
            f
            for f, on in (
                ("required", self.required),
                ("unique", self.unique),
                ("indexed", self.indexed and not self.unique),
            )
            if on
        ]
        if self.default is not None:
            flags.append(f"default {json.dumps(self.default)}")
        return kind + (f" ({', '.join(flags)})" if flags else "")


@dataclass(frozen=True)
class Reverse:
    name: str
    noun: str
    field: str


@dataclass(frozen=True)
class Verb:
    name: str
    past: str
    sets: str | None  # the first enum field that contains `past`


@dataclass
class Noun:
    name: str
    domain: str
    source: str
    fields: dict[str, Field] = field(default_factory=dict)
    reverses: dict[str, Reverse] = field(default_factory=dict)
    verbs: dict[str, Verb] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.name.lower() + "_"

    @cached_property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields.values() if f.searchable)

    @cached_property
    def indexed_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields.values() if f.indexed or f.unique)

    def to_dict(self) -> dict[str, Any]:
        """The noun as `fetch {"type": "Schema"}` shows it."""
        return {
            "name": self.name,
            "domain": self.domain,
            "idPrefix": self.prefix,
            "fields": {
                f.name: {
                    "type": f.type,
                    **({"enum": list(f.enum)} if f.enum else {}),
                    **({"relationship": f.relation, "reverse": f.reverse_name} if f.relation else {}),
                    "required": f.required,
                    "array": f.array,
                    "indexed": f.indexed,
                    "unique": f.unique,
                    **({"default": f.default} if f.default is not None else {}),
                    "notation": f.describe(),
                }
                for f in self.fields.values()
            },
            "relationships": {
                **{
                    f.name: {"noun": f.relation, "kind": "forward", "reverse": f.reverse_name}
                    for f in self.fields.values()
                    if f.relation
                },
                **{r.name: {"noun": r.noun, "kind": "reverse", "field": r.field} for r in self.reverses.values()},
            },
            "verbs": {
                v.name: {"event": f"{self.name}.{v.past}", "sets": ({v.sets: v.past} if v.sets else {})}
                for v in self.verbs.values()
            },
        }


class SchemaSet:
    """All nouns known to a server, by name."""

    def __init__(self, nouns: dict[str, Noun]) -> None:
        self.nouns = nouns
        self.by_prefix = {n.prefix: n for n in nouns.values()}

    def __contains__(self, name: object) -> bool:
        return name in self.nouns

    def __getitem__(self, name: str) -> Noun:
        return self.nouns[name]

    def names(self) -> list[str]:
        return sorted(self.nouns)


def builtin_schema_dir() -> Path:
    """`schemas/` of the source tree, or its copy inside an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_schemas", here.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise SchemaError(str(here), None, None, "the built-in schemas folder is missing from this installation")


FILE_KEYS = ("$domain", "$schema", "$comment")  # a schema file's keys that are not nouns (the last two ignored)


def load_schemas(extra_dirs: list[Path] | tuple[Path, ...] = (), include_builtin: bool = True) -> SchemaSet:
    """Read every `*.json` in the built-in folder and each extra folder, in order.

    A later folder may redefine a noun of an earlier one (it replaces it whole);
    the same noun twice in one folder is an error."""
    dirs = ([builtin_schema_dir()] if include_builtin else []) + [Path(d) for d in extra_dirs]
    raw: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for folder in dirs:
        if not folder.is_dir():
            raise SchemaError(str(folder), None, None, "schema folder does not exist")
        seen_here: dict[str, str] = {}
        files = sorted(folder.glob("*.json"))
        if not files and not (include_builtin and folder is dirs[0]):
            raise SchemaError(str(folder), None, None, "schema folder holds no *.json file (schemas are JSON files)")
        ignored = sorted(
            p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.is_dir() or p.suffix != ".json"
        )
        if ignored:
            log.warning(
                "schema folder %s: ignoring %s (only its own *.json files hold schemas, not its subfolders')",
                folder, ", ".join(ignored),
            )  # fmt: skip
        for path in files:
            for noun_name, domain, body in _read_file(path):
                if noun_name in seen_here:
                    raise SchemaError(str(path), noun_name, None, f"noun already defined in {seen_here[noun_name]}")
                seen_here[noun_name] = str(path)
                if noun_name in raw:
                    earlier = raw[noun_name][0]
                    builtin = include_builtin and Path(earlier).parent == dirs[0]
                    (log.info if builtin else log.warning)(
                        "schema %s redefines %s from %s (the later folder's definition replaces it whole)",
                        path, noun_name, earlier,
                    )  # fmt: skip
                raw[noun_name] = (str(path), domain, body)
    nouns = {name: _build_noun(name, src, domain, body) for name, (src, domain, body) in raw.items()}
    _check_prefixes(nouns)
    _check_links(nouns)
    _link_reverses(nouns)
    _check_defaults(nouns)
    _check_required_links(nouns)
    return SchemaSet(nouns)


def _check_required_links(nouns: dict[str, Noun]) -> None:
    """Warn of required relationships (`-> Noun!`) that lead back to where they start: in a tenant without
    entities of those nouns none could be created first (each needs one of the next to exist). A warning,
    not a refusal: a tenant that has some may go on linking new ones to them."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done (no cycle through it)

    def walk(name: str, path: list[tuple[Noun, Field]]) -> None:
        state[name] = 1
        for f in nouns[name].fields.values():
            if not (f.relation and f.required and not f.array):
                continue
            if state.get(f.relation) == 1:
                steps = [*path, (nouns[name], f)]
                loop = steps[next(i for i, (n, _) in enumerate(steps) if n.name == f.relation) :]
                noun, field = loop[0]
                chain = " -> ".join(f"{n.name}.{g.name}" for n, g in loop) + f" -> {f.relation}"
                log.warning(
                    "%s: %s.%s: required relationships lead back to %s (%s): in a tenant without any of them, "
                    "none could be created first; make one of them optional",
                    noun.source, noun.name, field.name, f.relation, chain,
                )  # fmt: skip
                continue
            if state.get(f.relation) is None:
                walk(f.relation, [*path, (nouns[name], f)])
        state[name] = 2

    for name in nouns:
        if state.get(name) is None:
            walk(name, [])


def _link_reverses(nouns: dict[str, Noun]) -> None:
    """`-> Organization.contacts` names the reverse relationship: Organization gets `contacts` (unless it
    declares it with `<-` itself), so `include: ["contacts"]` works from either side."""
    for noun in nouns.values():
        for f in noun.fields.values():
            if not f.relation or not f.reverse_name:
                continue
            target, name = nouns[f.relation], f.reverse_name
            existing = target.reverses.get(name)
            if existing is not None and (existing.noun, existing.field) != (noun.name, f.name):
                raise SchemaError(
                    noun.source, noun.name, f.name,
                    f"its reverse name {name!r} is already {target.name}'s relationship <- {existing.noun}.{existing.field}",
                )  # fmt: skip
            named = next((r.name for r in target.reverses.values() if (r.noun, r.field) == (noun.name, f.name)), name)
            if named != name:
                raise SchemaError(
                    noun.source, noun.name, f.name,
                    f"its reverse name {name!r} differs from the name {target.name} declares for it ({named!r})",
                )  # fmt: skip
            if name in target.fields:
                raise SchemaError(
                    noun.source, noun.name, f.name, f"its reverse name {name!r} is already a field of {target.name}"
                )
            if not FIELD_NAME.fullmatch(name):
                raise SchemaError(noun.source, noun.name, f.name, f"reverse name {name!r} is not a valid field name")
            target.reverses.setdefault(name, Reverse(name=name, noun=noun.name, field=f.name))


def _check_defaults(nouns: dict[str, Noun]) -> None:
    """A default must be a valid value of its field: found now, not by every create that leaves it out;
    and a unique field has none (every create after the first that left it out would be refused)."""
    from ..errors import ValidationFailed
    from .validation import NounValidator

    for noun in nouns.values():
        defaults = {f.name: f.default for f in noun.fields.values() if f.default is not None}
        if not defaults:
            continue
        unique = next((name for name in defaults if noun.fields[name].unique), None)
        if unique is not None:
            raise SchemaError(
                noun.source, noun.name, unique,
                "a unique field (##) cannot have a default: only one entity could ever hold it",
            )  # fmt: skip
        validator = NounValidator(noun)
        for name, value in defaults.items():
            try:
                validator.check_value(name, value)
            except ValidationFailed as exc:
                raise SchemaError(
                    noun.source, noun.name, name, f"default {value!r} is not valid: {exc.message}"
                ) from None


def _check_prefixes(nouns: dict[str, Noun]) -> None:
    """Ids name their noun by prefix (`contact_`): two nouns whose names differ only in case would share one."""
    seen: dict[str, Noun] = {}
    for noun in nouns.values():
        other = seen.setdefault(noun.prefix, noun)
        if other is not noun:
            raise SchemaError(
                noun.source, noun.name, None,
                f"its ids would start with '{noun.prefix}', like those of {other.name} ({other.source}): "
                "noun names must differ in more than case",
            )  # fmt: skip


class _Object(dict[str, Any]):
    """A JSON object as read, with the keys it held twice (the first value of each is kept)."""

    twice: list[str]


def _keep_duplicates(pairs: list[tuple[str, Any]]) -> _Object:
    out = _Object()
    out.twice = []
    for key, value in pairs:
        if key in out:
            out.twice.append(key)
        else:
            out[key] = value
    return out


def _refuse_duplicates(path: Path, doc: Any) -> None:
    """A key given twice in the file, or in one noun, named where it is (JSON keeps only the last one)."""
    if not isinstance(doc, _Object):
        return
    if doc.twice:
        raise SchemaError(str(path), None, None, f"the key {doc.twice[0]!r} appears twice in the file's object")
    for name, body in doc.items():
        if isinstance(body, _Object) and body.twice:
            raise SchemaError(str(path), name, body.twice[0], f"{name} has the key {body.twice[0]!r} twice")


def _read_file(path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_keep_duplicates)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(str(path), None, None, f"not readable as JSON: {exc}") from None
    _refuse_duplicates(path, doc)
    if not isinstance(doc, dict):
        raise SchemaError(str(path), None, None, "expected a JSON object of nouns")
    domain = doc.get("$domain", path.stem)
    if not isinstance(domain, str):
        raise SchemaError(str(path), None, None, "$domain must be a string")
    out = []
    for name, body in doc.items():
        if name.startswith("$"):
            if name not in FILE_KEYS:
                raise SchemaError(
                    str(path), None, None, f"unknown key {name!r}; a file's own keys: {', '.join(FILE_KEYS)}"
                )
            continue
        if not NOUN_NAME.fullmatch(name):
            raise SchemaError(str(path), name, None, f"noun names are PascalCase ({NOUN_NAME.pattern})")
        if name in RESERVED_NOUNS:
            raise SchemaError(str(path), name, None, f"{name} is reserved ({', '.join(RESERVED_NOUNS)})")
        if not isinstance(body, dict) or not body:
            raise SchemaError(str(path), name, None, "expected a non-empty object of fields and verbs")
        out.append((name, domain, body))
    return out


def _build_noun(name: str, source: str, domain: str, body: dict[str, Any]) -> Noun:
    noun = Noun(name=name, domain=domain, source=source)
    verbs: list[tuple[str, str]] = []
    for key, value in body.items():
        try:
            spec = parse_entry(key, value)
        except NotationError as exc:
            raise SchemaError(source, name, key, str(exc)) from None
        if isinstance(spec, VerbSpec):
            verbs.append((key, spec.past))
        elif isinstance(spec, ReverseSpec):
            noun.reverses[key] = Reverse(name=key, noun=spec.noun, field=spec.field)
        else:
            assert isinstance(spec, FieldSpec)
            noun.fields[key] = Field(name=key, **spec.__dict__)
    reserved = [key for key in noun.fields if key in RESERVED_FIELDS]
    if reserved:
        raise SchemaError(
            source,
            name,
            reserved[0],
            f"{', '.join(RESERVED_FIELDS)} are reserved: rollback and revert events mark their data with them",
        )
    for verb, past in verbs:
        sets = next((f.name for f in noun.fields.values() if f.enum and past in f.enum), None)
        noun.verbs[verb] = Verb(name=verb, past=past, sets=sets)
    if not noun.fields:
        raise SchemaError(source, name, None, "a noun needs at least one stored field")
    return noun


def _check_links(nouns: dict[str, Noun]) -> None:
    for noun in nouns.values():
        for f in noun.fields.values():
            if f.relation and f.relation not in nouns:
                raise SchemaError(
                    noun.source, noun.name, f.name, f"relationship target {f.relation!r} is not a known noun"
                )
        for r in noun.reverses.values():
            other = nouns.get(r.noun)
            if other is None:
                raise SchemaError(noun.source, noun.name, r.name, f"reverse relationship names unknown noun {r.noun!r}")
            target = other.fields.get(r.field)
            if target is None or target.relation != noun.name:
                raise SchemaError(
                    noun.source,
                    noun.name,
                    r.name,
                    f"{r.noun}.{r.field} (in {other.source}) is not a '-> {noun.name}' relationship"
                    + (
                        f"; a noun redefined in another folder keeps the links other nouns have to it: keep "
                        f"{r.field} as '-> {noun.name}', or redefine {noun.name} too"
                        if other.source != noun.source
                        else ""
                    ),
                )
        first: dict[str, str] = {}
        for verb in noun.verbs.values():
            if verb.past in ("Created", "Updated", "Deleted"):
                raise SchemaError(
                    noun.source, noun.name, verb.name,
                    f"its past tense {verb.past!r} is the event of a CRUD action: name another",
                )  # fmt: skip
            earlier = first.setdefault(verb.past, verb.name)
            if earlier != verb.name:
                raise SchemaError(
                    noun.source, noun.name, verb.name,
                    f"its past tense {verb.past!r} is also {earlier}'s: each verb's event type must be its own",
                )  # fmt: skip
