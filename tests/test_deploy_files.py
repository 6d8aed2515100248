"""The monitoring files of deploy/ agree with each other and with docs/operations.md.

Prometheus scrapes every bridge of deploy/compose.yaml on its metrics port, Grafana's data source
is the compose Prometheus and the dashboard refers to it by uid, the dashboard's queries use only
the metrics and labels that docs/operations.md documents (a public interface), and compose mounts
files that exist where the provisioning files look for them.

PyYAML is not among the dependencies, so a small reader of the YAML these files use (block
mappings and sequences, flow lists, quoted scalars, folded scalars, anchors and aliases) stands
in; it refuses what it does not understand rather than guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sse-bridge.json"
OPERATIONS = ROOT / "docs" / "operations.md"


# A small YAML reader -----------------------------------------------------------------------------

# "key:" or "key: value"; the key is plain (no quotes, no flow collections).
_KEY = re.compile(r"^([^\s:'\"\[{#&*!|>-][^:]*?|-[^\s:][^:]*?):(?:\s+(.*))?$")
_FLOW_ITEM = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'|[^,\s][^,]*")
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?")


def _strip_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'" and (i == 0 or line[i - 1] in " \t[,:"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _scalar(text: str) -> Any:
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"unsupported flow sequence: {text}")
        return [_scalar(item.strip()) for item in _FLOW_ITEM.findall(text[1:-1])]
    if text.startswith("{") or text.startswith("!"):
        raise ValueError(f"unsupported YAML: {text}")
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"unterminated string: {text}")
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~"):
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class _YamlSubset:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0
        self.anchors: dict[str, Any] = {}

    def parse(self) -> Any:
        first = self._peek()
        value = None if first is None else self._block(first[0])
        if self._peek() is not None:
            raise ValueError(f"line {self.i + 1}: unexpected indentation")
        return value

    def _peek(self) -> tuple[int, str] | None:
        """The next line with content, as (indentation, text without comment), unconsumed."""
        while self.i < len(self.lines):
            content = _strip_comment(self.lines[self.i])
            if content.strip():
                if "\t" in content[: len(content) - len(content.lstrip())]:
                    raise ValueError(f"line {self.i + 1}: tab in indentation")
                return len(content) - len(content.lstrip()), content.strip()
            self.i += 1
        return None

    def _block(self, indent: int) -> Any:
        line = self._peek()
        assert line is not None
        return self._sequence(indent) if _is_item(line[1]) else self._mapping(indent)

    def _mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        explicit: set[str] = set()
        while (line := self._peek()) and line[0] == indent and not _is_item(line[1]):
            match = _KEY.match(line[1])
            if match is None:
                raise ValueError(f"line {self.i + 1}: not a mapping entry: {line[1]}")
            self.i += 1
            key = match[1].strip()
            value = self._value(match[2] or "", indent)
            if key == "<<":
                result.update(value)
            elif key in explicit:
                raise ValueError(f"line {self.i}: duplicate key {key!r}")
            else:
                explicit.add(key)
                result[key] = value
        return result

    def _sequence(self, indent: int) -> list[Any]:
        result: list[Any] = []
        while (line := self._peek()) and line[0] == indent and _is_item(line[1]):
            rest = line[1][1:].strip()
            if _KEY.match(rest):
                # "- key: value" opens a mapping whose keys line up with "key".
                column = indent + len(line[1]) - len(rest)
                self.lines[self.i] = " " * column + rest
                result.append(self._mapping(column))
            elif rest:
                self.i += 1
                result.append(self._value(rest, indent))
            else:
                self.i += 1
                nested = self._peek()
                result.append(self._block(nested[0]) if nested and nested[0] > indent else None)
        return result

    def _value(self, rest: str, indent: int) -> Any:
        anchor = ""
        if rest.startswith("&"):
            anchor, _, rest = rest[1:].partition(" ")
            rest = rest.strip()
        value: Any
        if rest.startswith("*"):
            value = self.anchors[rest[1:]]
        elif rest in (">", "|", ">-", "|-"):
            value = self._block_scalar(rest, indent)
        elif rest:
            value = _scalar(rest)
        else:
            nested = self._peek()
            deeper = nested is not None and (
                nested[0] > indent or (nested[0] == indent and _is_item(nested[1]))
            )
            value = self._block(nested[0]) if nested is not None and deeper else None
        if anchor:
            self.anchors[anchor] = value
        return value

    def _block_scalar(self, style: str, indent: int) -> str:
        body: list[str] = []
        while self.i < len(self.lines):
            raw = self.lines[self.i].rstrip()
            if raw and len(raw) - len(raw.lstrip()) <= indent:
                break
            body.append(raw)
            self.i += 1
        while body and not body[-1]:
            body.pop()
        margin = min((len(b) - len(b.lstrip()) for b in body if b), default=0)
        lines = [b[margin:] for b in body]
        text = "\n".join(lines) if style[0] == "|" else _fold(lines)
        return text if style.endswith("-") else text + "\n"


def _fold(lines: list[str]) -> str:
    # Lines at the block's indentation are joined by a space, unless blank lines part them (each
    # one a line break); more-indented lines keep their line breaks.
    text = ""
    blanks = 0
    previous_more: bool | None = None
    for line in lines:
        if not line:
            blanks += 1
            continue
        more = line.startswith(" ")
        if previous_more is None:
            text = "\n" * blanks + line
        elif more or previous_more:
            text += "\n" * (blanks + 1) + line
        else:
            text += ("\n" * blanks or " ") + line
        blanks = 0
        previous_more = more
    return text


def load_yaml(text: str) -> Any:
    return _YamlSubset(text).parse()


def load_yaml_file(path: Path) -> Any:
    return load_yaml(path.read_text())


# The documented metrics and the queries ----------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    type: str
    labels: frozenset[str]


def documented_metrics(text: str) -> dict[str, Metric]:
    """The table of the "## Metrics" section: name -> (type, labels)."""
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0].replace(" ", "") == "|name|type|labels|meaning|", rows[0]
    metrics: dict[str, Metric] = {}
    for row in rows[2:]:
        name, kind, labels, _meaning = (cell.strip() for cell in row.strip(" |").split(" | "))
        assert re.fullmatch(r"`\w+`", name), row
        metrics[name.strip("`")] = Metric(kind, frozenset(re.findall(r"`(\w+)`", labels)))
    return metrics


_SERIES = re.compile(r"\bsse_bridge_\w+")
# Labels every scraped series carries: Prometheus adds them from the scrape target.
_TARGET_LABELS = frozenset({"instance", "job"})


def query_problems(expr: str, metrics: dict[str, Metric]) -> list[str]:
    """What in a PromQL expression is not a documented metric, or not one of its labels."""
    problems: list[str] = []
    allowed = set(_TARGET_LABELS)
    series = _SERIES.findall(expr)
    if not series:
        problems.append(f"{expr}: uses no sse_bridge metric")
    for name in series:
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            stripped = name.removesuffix(suffix)
            if stripped != name and stripped in metrics and metrics[stripped].type == "histogram":
                base = stripped
        if base not in metrics:
            problems.append(f"{name}: not a metric documented in docs/operations.md")
            continue
        allowed |= metrics[base].labels
        if name.endswith("_bucket") and base != name:
            allowed.add("le")
    used: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used |= {label.strip() for label in group.split(",") if label.strip()}
    used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    problems += [f"{expr}: {label!r} is no label of {series}" for label in sorted(used - allowed)]
    return problems


def walk(value: Any) -> Iterator[Any]:
    yield value
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, (dict, list)):
        for child in children:
            yield from walk(child)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml_file(DEPLOY / "compose.yaml")
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts: container path -> host path (relative to deploy/)."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = source
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a path inside a service's container comes from on the host, if from a mount."""
    for target, source in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return DEPLOY / source / container_path[len(target) :].lstrip("/")
    return None


def service_with_image(image: str) -> tuple[str, dict[str, Any]]:
    found = [
        (name, service)
        for name, service in compose()["services"].items()
        if service.get("image", "").split(":")[0] == image
    ]
    assert len(found) == 1, f"compose needs one {image} service, has {found}"
    return found[0]


def prometheus_datasource() -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        source
        for path in sorted((GRAFANA / "provisioning" / "datasources").glob("*.y*ml"))
        for source in load_yaml_file(path)["datasources"]
        if source["type"] == "prometheus"
    ]
    assert len(found) == 1, found
    return found[0]


# The reader ------------------------------------------------------------------------------------


def test_the_yaml_reader_reads_the_constructs_the_deploy_files_use() -> None:
    text = """\
# a comment
x-common: &common
  env:
    A: "1"        # a comment after a value
    B: http://host:80/a#b
  list: ["a", "", 'it''s', 9]
top:
  one: *common
  two:
    <<: *common
    extra: more
  folded: >
    sh -c "first
           second"
  prose: >-
    one
    two

    three
  items:
    - plain
    - "./a:/b:ro"
    - name: n
      port: 9100
      tags:
        - t
    -
      nested: true
  flat:
  - 1.5
  empty:
"""
    common = {"env": {"A": "1", "B": "http://host:80/a#b"}, "list": ["a", "", "it's", 9]}
    assert load_yaml(text) == {
        "x-common": common,
        "top": {
            "one": common,
            "two": {**common, "extra": "more"},
            "folded": 'sh -c "first\n       second"\n',
            "prose": "one two\nthree",
            "items": [
                "plain",
                "./a:/b:ro",
                {"name": "n", "port": 9100, "tags": ["t"]},
                {"nested": True},
            ],
            "flat": [1.5],
            "empty": None,
        },
    }


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\n   b: 2\n",  # a stray indentation
        "a: {b: 1}\n",  # flow mappings are not read
        "a: 1\na: 2\n",  # a duplicate key
        "just a line\n",  # neither a mapping nor a sequence
        "a:\n\tb: 1\n",  # a tab
    ],
)
def test_the_yaml_reader_refuses_what_it_does_not_read(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages vary with the input
        load_yaml(text)


# The documented metrics ------------------------------------------------------------------------


def test_the_documented_metrics_are_well_formed() -> None:
    metrics = documented_metrics(OPERATIONS.read_text())
    assert len(metrics) >= 10
    for name, metric in metrics.items():
        assert name.startswith("sse_bridge_"), name
        assert metric.type in {"counter", "gauge", "histogram"}, (name, metric)
        # Prometheus naming: counters end in _total, durations are histograms in seconds.
        assert name.endswith("_total") == (metric.type == "counter"), name
        if metric.type == "histogram":
            assert name.endswith("_seconds"), name
        assert "le" not in metric.labels, name


def test_the_query_check_catches_unknown_metrics_and_labels() -> None:
    metrics = documented_metrics(OPERATIONS.read_text())
    ttfe = "sse_bridge_time_to_first_event_seconds"
    good = f"histogram_quantile(0.95, sum by (le, dialect) (rate({ttfe}_bucket[5m])))"
    assert query_problems(good, metrics) == []
    assert (
        query_problems(
            'sum(rate(sse_bridge_streams_total{outcome=~"upstream_error|stopped"}[5m]))', metrics
        )
        == []
    )
    bad = [
        "sum(sse_bridge_stream_active)",  # a misspelt name
        "sum(rate(sse_bridge_events_total_bucket[5m]))",  # _bucket of a counter
        "sum by (kind) (rate(sse_bridge_streams_total[5m]))",  # a label of another metric
        'sum(rate(sse_bridge_streams_total{reason="max_streams"}[5m]))',  # the same, as matcher
        "sum by (le) (rate(sse_bridge_streams_total[5m]))",  # le without a _bucket
        "sum(rate(http_requests_total[5m]))",  # nothing of the bridge's
    ]
    for expr in bad:
        assert query_problems(expr, metrics), expr


def test_the_promql_examples_of_the_docs_use_documented_metrics() -> None:
    text = OPERATIONS.read_text()
    metrics = documented_metrics(text)
    examples = re.findall(r"```promql\n(.*?)```", text, re.S)
    assert len(examples) >= 5
    assert [p for expr in examples for p in query_problems(expr, metrics)] == []


# The dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36  # data sources referred to by uid
    assert board["uid"]
    assert board["title"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"], panel
        assert panel["title"], panel
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        columns = range(pos["x"], pos["x"] + pos["w"])
        area = {(x, y) for x in columns for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(set(refs)) == len(refs), panel["title"]


def test_the_dashboard_queries_use_documented_metrics_and_labels() -> None:
    metrics = documented_metrics(OPERATIONS.read_text())
    assert [p for expr in dashboard_exprs() for p in query_problems(expr, metrics)] == []


def test_the_dashboard_shows_what_operators_need() -> None:
    exprs = {" ".join(expr.split()) for expr in dashboard_exprs()}
    ttfe = "sum by (le) (rate(sse_bridge_time_to_first_event_seconds_bucket[5m]))"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, {ttfe})" in exprs
    assert "sum(sse_bridge_streams_active)" in exprs
    assert "sum by (outcome) (rate(sse_bridge_streams_total[5m]))" in exprs
    assert any(
        e.startswith("histogram_quantile(0.99, ") and "sse_bridge_event_gap_seconds_bucket" in e
        for e in exprs
    )
    assert "sum by (kind) (rate(sse_bridge_upstream_errors_total[5m]))" in exprs
    assert "sum by (reason) (rate(sse_bridge_requests_refused_total[5m]))" in exprs


def test_the_dashboard_uses_the_provisioned_data_source_by_uid() -> None:
    uid = prometheus_datasource()["uid"]
    refs = [v for v in walk(dashboard()) if isinstance(v, dict) and "uid" in v and "type" in v]
    assert refs, "the dashboard names no data source"
    assert {(ref["type"], ref["uid"]) for ref in refs} == {("prometheus", uid)}
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


# Provisioning, compose and Prometheus ----------------------------------------------------------


def test_the_data_source_is_the_compose_prometheus() -> None:
    source = prometheus_datasource()
    name, _ = service_with_image("prom/prometheus")
    url = urlsplit(source["url"])
    # 9090: Prometheus's own default port (--web.listen-address), inside the compose network.
    assert (url.scheme, url.hostname, url.port) == ("http", name, 9090)


def test_grafana_finds_its_provisioning_and_the_dashboard_where_compose_mounts_them() -> None:
    _, grafana = service_with_image("grafana/grafana")
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == GRAFANA / "provisioning"
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in load_yaml_file(path)["providers"]
    ]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        folder = host_path(grafana, provider["options"]["path"])
        assert folder is not None, provider
        assert folder.resolve() == DASHBOARD.parent.resolve()
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        home_file = host_path(grafana, home)
        assert home_file is not None, home
        assert home_file.resolve() == DASHBOARD.resolve()


def test_compose_mounts_files_that_exist() -> None:
    spec = compose()
    named = set(spec.get("volumes") or {})
    checked = 0
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
                checked += 1
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        if "build" in service:
            build = service["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
    assert checked >= 4  # nginx.conf, prometheus.yml and Grafana's two folders


def test_prometheus_scrapes_every_bridge_on_its_metrics_port() -> None:
    config = load_yaml_file(DEPLOY / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "15s"
    services = compose()["services"]
    bridges = {
        name: service["environment"]
        for name, service in services.items()
        if "SSE_BRIDGE_UPSTREAM" in (service.get("environment") or {})
    }
    assert sorted(bridges) == ["bridge-1", "bridge-2"]
    expected = set()
    for name, environment in bridges.items():
        port = environment.get("SSE_BRIDGE_METRICS_PORT")
        assert isinstance(port, str), f"{name}: no SSE_BRIDGE_METRICS_PORT (a string)"
        assert port.isdigit(), f"{name}: SSE_BRIDGE_METRICS_PORT={port!r}"
        assert port != environment.get("SSE_BRIDGE_PORT", "8000"), name
        expected.add(f"{name}:{port}")
    jobs = config["scrape_configs"]
    targets = {
        target
        for job in jobs
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == expected
    _, prometheus = service_with_image("prom/prometheus")
    assert host_path(prometheus, "/etc/prometheus/prometheus.yml") == DEPLOY / "prometheus.yml"
