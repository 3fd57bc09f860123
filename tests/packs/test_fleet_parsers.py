"""The generated files against the rules of the programs that read them, ported from their
source (PyYAML accepting a file says nothing about what fleetctl or osqueryd do with it).

- fleetctl apply: fleetdm/fleet pkg/spec/spec.go (SplitYaml, GroupFromBytes; read at
  01fee809), server/fleet/queries.go (QuerySpec, Query.Verify), server/fleet/labels.go
  (LabelSpec), server/service/client.go (ApplyGroup: queries before labels),
  server/service/queries.go (label scoping needs Premium).
- Fleet GitOps: pkg/spec/gitops.go (parseReports, parseLabels, validateReport, the
  unknown-key check of Fleet 4.83, fleetdm/fleet#40963; read at 00b32fd0) and its
  ExpandEnv, which expands $VAR in the whole file, SQL included (MaybeExpand, getShellName).
- osqueryd: osquery/config/packs.cpp (Pack::initialize), osquery/config/parsers and
  config.cpp (comment stripping, 4 MiB, 32 levels), osquery/core/system.cpp (checkPlatform);
  read at osquery a5b14f63.

A failure says which program would refuse the file and with which of its messages.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from osquery_netutil.packs import formats, source as packs

QUERIES = packs.load()
FILES = formats.generated(QUERIES)


class Refused(Exception):
    """What the ported parser would print."""


# -- fleetctl apply ------------------------------------------------------------------
def split_yaml(text: str) -> list[str]:
    """SplitYaml: split on `(?m:^---[\\t ]*)`, trim each chunk, drop the empty ones only:
    a chunk of comments is kept."""
    return [c.strip() for c in re.split(r"(?m)^---[\t ]*", text) if c.strip()]


KINDS = {"report", "query", "pack", "label", "policy", "config", "enroll_secret", "user_roles", "fleet", "team"}
# QuerySpec's json tags and their Go types (server/fleet/queries.go; labels_include_* since the
# label scoping of reports, server/service/queries.go); `fleet` is `team`'s renameto alias.
QUERY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "description": str, "query": str, "team": str, "fleet": str, "interval": int,
    "observer_can_run": bool, "platform": str, "min_osquery_version": str, "automations_enabled": bool,
    "logging": str, "discard_data": bool, "labels_include_any": list, "labels_include_all": list}
LABEL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int, "name": str, "description": str, "query": str, "platform": str, "label_type": (str, int),
    "label_membership_type": str, "hosts": list, "criteria": dict, "team_id": int, "fleet_id": int}
LOGGING = {"snapshot", "differential", "differential_ignore_removals"}
PLATFORMS = {"darwin", "linux", "windows", "chrome"}


def _decode(spec: Any, fields: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    """encoding/json into the spec struct (ghodss/yaml turns YAML into JSON first): a value
    of the wrong type fails; a key the struct lacks is dropped (fleetctl is not strict)."""
    if not isinstance(spec, dict):
        raise Refused(f"unmarshaling {where} spec: cannot unmarshal into struct")
    kept = {}
    for key, value in spec.items():
        if key in fields:
            wanted = fields[key]
            if isinstance(value, bool) and wanted is int or not isinstance(value, wanted) or (wanted is int and value < 0):
                raise Refused(f"unmarshaling {where} spec: json: cannot unmarshal {type(value).__name__} into {key}")
            kept[key] = value
    return kept


def group_from_bytes(text: str) -> dict[str, list[dict[str, Any]]]:
    """GroupFromBytes: every chunk needs a kind and a spec (apiVersion is never checked)."""
    group: dict[str, list[dict[str, Any]]] = {"queries": [], "labels": []}
    for chunk in split_yaml(text):
        try:
            doc = yaml.safe_load(chunk)
        except yaml.YAMLError as exc:
            raise Refused(f"failed to unmarshal spec item {exc}") from None
        doc = doc if isinstance(doc, dict) else {}
        kind = str(doc.get("kind") or "")
        if doc.get("spec") is None:
            raise Refused('Missing required fields ("spec", "kind") on provided configuration.' if not kind
                          else f'Missing required fields ("spec") on provided "{kind}" configuration.')
        if kind.lower() not in KINDS:
            raise Refused(f'unknown kind "{kind}"')
        if kind.lower() in ("report", "query"):
            group["queries"].append(_decode(doc["spec"], QUERY_FIELDS, kind))
        elif kind.lower() == "label":
            group["labels"].append(_decode(doc["spec"], LABEL_FIELDS, kind))
    return group


def verify_query(spec: dict[str, Any], premium: bool, labels: set[str]) -> None:
    """What the server checks when a report is applied: Query.Verify, the Premium check of
    label scoping and that its labels exist (ApplyQuerySpecs)."""
    if not spec.get("name"):
        raise Refused("query name cannot be empty")
    if not spec.get("query"):
        raise Refused("query's SQL query cannot be empty")
    if (spec.get("logging") or "snapshot") not in LOGGING:
        raise Refused("invalid logging value, must be one of 'snapshot', 'differential', 'differential_ignore_removals'")
    platform = spec.get("platform") or ""
    if platform and not {p.strip() for p in platform.split(",")} <= PLATFORMS:
        raise Refused("query's platform must be a comma-separated list of 'darwin', 'linux', 'windows', and/or 'chrome'")
    scoped = [*spec.get("labels_include_any", []), *spec.get("labels_include_all", [])]
    if scoped and not premium:
        raise Refused("Requires Fleet Premium license")
    if spec.get("labels_include_any") and spec.get("labels_include_all"):
        raise Refused("only one of labels_include_any and labels_include_all")
    missing = [name for name in scoped if name not in labels]
    if missing:
        raise Refused(f"label not found: {missing[0]}")


def fleetctl_apply(text: str, fleet: dict[str, Any]) -> None:
    """`fleetctl apply -f`: ApplyGroup applies the file's queries first, then its labels."""
    group = group_from_bytes(text)
    for spec in group["queries"]:
        verify_query(spec, fleet["premium"], fleet["labels"])
    for spec in group["labels"]:
        if spec.get("label_membership_type", "dynamic") not in ("dynamic", "manual", "host_vitals"):
            raise Refused(f"invalid LabelMembershipType: {spec['label_membership_type']}")
        fleet["labels"].add(spec["name"])
    fleet["reports"] += [s["name"] for s in group["queries"]]


@pytest.mark.parametrize("file", ["fleetctl-apply.yml", "fleetctl-apply-queries.yml"])
def test_fleetctl_applies_every_report_on_fleet_free(file: str) -> None:
    fleet: dict[str, Any] = {"premium": False, "labels": set(), "reports": []}
    fleetctl_apply(FILES[file], fleet)
    assert fleet["reports"] == [q.name for q in QUERIES]
    kinds = {yaml.safe_load(c)["kind"] for c in split_yaml(FILES[file])}
    assert kinds == ({"report"} if file == "fleetctl-apply.yml" else {"query"})
    assert ("since queries were renamed to reports" if kinds == {"report"} else "from before queries were renamed") in FILES[file]


def test_fleetctl_applies_the_label_then_the_scoped_reports_on_premium_and_free_refuses_them() -> None:
    fleet: dict[str, Any] = {"premium": True, "labels": set(), "reports": []}
    with pytest.raises(Refused, match="label not found"):   # the order README gives matters
        fleetctl_apply(FILES["fleetctl-apply-premium.yml"], dict(fleet, labels=set()))
    fleetctl_apply(FILES["fleetctl-apply-label.yml"], fleet)
    fleetctl_apply(FILES["fleetctl-apply-premium.yml"], fleet)
    assert fleet["labels"] == {formats.LABEL} and fleet["reports"] == [q.name for q in QUERIES]
    with pytest.raises(Refused, match="Requires Fleet Premium license"):
        fleetctl_apply(FILES["fleetctl-apply-premium.yml"], {"premium": False, "labels": {formats.LABEL}, "reports": []})


def test_the_ported_split_refuses_a_comment_header_before_the_first_document() -> None:
    """The way the files of the first release failed (issue 20): the rule itself works."""
    old = "# a header\n" + FILES["fleetctl-apply.yml"].removeprefix("---\n")
    with pytest.raises(Refused, match=re.escape('Missing required fields ("spec", "kind") on provided configuration.')):
        group_from_bytes("---\n".join(["# a header\n", old]))
    assert split_yaml("a: 1\n--- \nb: 2\n#---\n") == ["a: 1", "b: 2\n#---"]


# -- Fleet GitOps ----------------------------------------------------------------------
GITOPS_REPORT_KEYS = set(QUERY_FIELDS)   # validateRawKeys over []Query: QuerySpec's tags and aliases
GITOPS_LABEL_KEYS = set(LABEL_FIELDS)


def expand_env(text: str, env: dict[str, str]) -> str:
    """GitOps' ExpandEnv over a whole file (MaybeExpand, after os.Expand): `${NAME}`, `$` and
    a shell special character or digit, or `$` and a name; an unset one is an error (no
    exception for SQL, only for $FLEET_VAR_ and description blocks, not taken here)."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.startswith("FLEET_VAR_"):
            return match.group(0)
        if name not in env:
            raise Refused(f'environment variable "{name}" not set; if you intended the literal string ${name} then '
                          f'please escape it as \\${name}.')
        return env[name]
    return re.sub(r"\$(?:\{([^}]*)\}|([*#$@!?\-0-9])|([A-Za-z0-9_]+))", replace, text)


def _known_keys(items: list[Any], allowed: set[str], section: str, file: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise Refused(f'Couldn\'t edit "{file}" at "{section}", expected type {section[:-1]} but got {type(item).__name__}')
        for key in item:   # path and paths too: a path file names no other file
            if key not in allowed:
                raise Refused(f'unknown key "{section}.[{i}].{key}" in "{file}"')


def gitops_path_file(text: str, section: str, file: str) -> list[dict[str, Any]]:
    """A `- path:` file under reports: or labels:, as parseReports/parseLabels read it: env
    expansion, then a top-level list (var pathQueries []*Query), known keys only, each
    report with an ASCII name and a query, names unique."""
    loaded = yaml.safe_load(expand_env(text, {}))
    if not isinstance(loaded, list):
        go_type = "Query" if section == "reports" else "Label"
        raise Refused(f'Couldn\'t edit "{file}" at "{section}", expected type []*spec.{go_type} but got object')
    _known_keys(loaded, GITOPS_REPORT_KEYS if section == "reports" else GITOPS_LABEL_KEYS, section, file)
    for item in loaded:
        for key in ("name", "query") if section == "reports" else ("name",):
            if not item.get(key):
                raise Refused(f"`{key}` is required for each {section[:-1]} in {file}")
        if not str(item["name"]).isascii():
            raise Refused(f"`name` must be in ASCII: {item['name']} in {file}")
    names = [item["name"] for item in loaded]
    if len(set(names)) != len(names):
        raise Refused(f"duplicate {section[:-1]} names")
    return loaded


@pytest.mark.parametrize("file", ["fleet-report-list.yml", "fleet-report-list-premium.yml"])
def test_gitops_path_files_are_lists_of_known_keys(file: str) -> None:
    items = gitops_path_file(FILES[file], "reports", file)
    assert [i["name"] for i in items] == [q.name for q in QUERIES]
    for item, q in zip(items, QUERIES):
        verify_query(item, premium=True, labels={formats.LABEL})
        assert item["query"] == q.sql and item["interval"] == q.interval and item["platform"] == "linux"
        assert item["automations_enabled"] == (q.severity in ("high", "critical"))
        assert ("labels_include_any" in item) == file.endswith("premium.yml")
    (label,) = gitops_path_file(FILES["fleet-label.yml"], "labels", "fleet-label.yml")
    assert label["name"] == formats.LABEL and label["query"] == formats.DISCOVERY


@pytest.mark.parametrize(("file", "key"), [("fleet-reports.yml", "reports"), ("fleet-queries.yml", "queries")])
def test_gitops_blocks_to_paste_hold_known_keys_and_cannot_be_named_by_path(file: str, key: str) -> None:
    loaded = yaml.safe_load(expand_env(FILES[file], {}))
    assert list(loaded) == [key]   # a fleet file's top-level key (`queries` is the deprecated alias)
    _known_keys(loaded[key], GITOPS_REPORT_KEYS, "reports", file)
    for item in loaded[key]:
        verify_query(item, premium=False, labels=set())
    with pytest.raises(Refused, match=r"expected type \[\]\*spec.Query but got object"):
        gitops_path_file(FILES[file], "reports", file)


def test_the_ported_gitops_rules_refuse_what_fleet_refuses() -> None:
    with pytest.raises(Refused, match='unknown key "reports.\\[0\\].labels_exclude_any"'):
        gitops_path_file("- {name: a, query: SELECT 1, labels_exclude_any: [x]}\n", "reports", "x.yml")
    with pytest.raises(Refused, match='environment variable "1" not set'):
        expand_env("query: SELECT regex_match(x, '(a)$1', 0)", {})
    assert expand_env("query: SELECT json_extract(x, '$.path') WHERE y LIKE '%$'", {}).count("$") == 2


# -- osqueryd --------------------------------------------------------------------------
MAX_CONFIG = 4 * 1024 * 1024
RESERVED_PREFIXES = ("query.", "cache.", "config_views.")


def osquery_config_text(text: str) -> str:
    """What osquery's config parser strips before parsing JSON: a backslash before a newline,
    and lines that start (after spaces) with # or //."""
    text = text.replace("\\\n", "")
    return "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(("#", "//")))


def _depth(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return 1 + max((_depth(c) for c in children), default=0)


def pack_schedule(text: str, sdk_version: str = "5.12.0") -> dict[str, int]:
    """Pack::initialize on a linux host: the queries osqueryd schedules (name -> interval);
    a pack whose platform or version does not fit is silently not run at all."""
    stripped = osquery_config_text(text)
    if len(stripped) > MAX_CONFIG:
        raise Refused(f"the config size exceeds the limit of {MAX_CONFIG} bytes")
    pack = json.loads(stripped)
    if _depth(pack) > 32:
        raise Refused("Configuration has too many nesting levels!")

    def version_ok(v: Any) -> bool:
        if not isinstance(v, str) or v in ("", "null"):
            return True
        return [int(x) for x in v.split(".")[:3]] <= [int(x) for x in sdk_version.split(".")[:3]]

    def platform_ok(p: Any) -> bool:
        return not isinstance(p, str) or p in ("", "null") or any(w in p for w in ("any", "all", "linux", "posix"))

    if not platform_ok(pack.get("platform")) or not version_ok(pack.get("version")):
        raise Refused("pack not run: platform or version")
    discovery = pack.get("discovery", [])
    assert isinstance(discovery, list) and all(isinstance(d, str) for d in discovery)
    schedule: dict[str, int] = {}
    for name, query in pack.get("queries", {}).items():
        if not isinstance(query, dict) or not platform_ok(query.get("platform")) or not version_ok(query.get("version")):
            continue
        if name.startswith(RESERVED_PREFIXES) or name.endswith(("epoch", "counter")):
            continue
        interval = query.get("interval", 3600)
        if not isinstance(query.get("query"), str) or not query["query"] or not isinstance(interval, int) \
                or not 1 <= interval <= 604800:
            continue
        schedule[name] = interval
    return schedule


def test_osqueryd_schedules_every_query_of_the_pack() -> None:
    text = FILES["netutil-pack.json"]
    assert pack_schedule(text) == {q.name: q.interval for q in QUERIES}
    pack = json.loads(text)
    assert pack["discovery"] == [formats.DISCOVERY]
    for q in QUERIES:
        entry = pack["queries"][q.name]
        assert entry["query"] == q.sql and entry["snapshot"] == (q.logging == "snapshot")
        assert entry["removed"] == (q.logging == "differential")
    assert osquery_config_text(text) == text   # nothing of the SQL is stripped as a comment


def test_the_ported_pack_rules_drop_what_osquery_drops() -> None:
    pack = {"platform": "linux", "queries": {"a": {"query": "SELECT 1", "interval": 0},
                                              "b_counter": {"query": "SELECT 1", "interval": 10},
                                              "c": {"query": "", "interval": 10},
                                              "d": {"query": "SELECT 1", "interval": 604800}}}
    assert pack_schedule(json.dumps(pack)) == {"d": 604800}
    with pytest.raises(Refused):
        pack_schedule(json.dumps({"platform": "darwin", "queries": {}}))
