"""The deployment artefacts under deploy/ are well-formed and agree with pullcache's contract.

The recipes themselves run in tests/test_deploy_{image,k8s,systemd,clients}.py. What is left
here needs no daemon: files that parse, alert rules and PromQL that Prometheus would reject
(checked with the real promtool), the Grafana dashboard's panels, datasource and metric names
(the checks Grafana applies; it cannot run here), and the shipped configs through pullcache's
own loader.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.host_install import parse_unit

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "pullcache.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
CLIENTS = DEPLOY / "clients"

STORAGE_PATH = "/var/lib/pullcache"
CONFIG_PATH = "/etc/pullcache/proxy.yml"
PORT = 5000
UPSTREAMS = {"docker.io", "ghcr.io", "quay.io"}

# DESIGN.md's metric table, plus pullcache_store_max_bytes (the bound the store is measured
# against) and Prometheus' own `up`.
CONTRACT_METRICS = {
    "pullcache_http_requests_total",
    "pullcache_http_request_duration_seconds",
    "pullcache_cache_requests_total",
    "pullcache_bytes_served_total",
    "pullcache_upstream_requests_total",
    "pullcache_upstream_request_duration_seconds",
    "pullcache_upstream_ratelimit_remaining",
    "pullcache_store_bytes",
    "pullcache_store_blobs",
    "pullcache_inflight_fetches",
    "pullcache_evictions_total",
    "pullcache_evicted_bytes_total",
    "pullcache_gc_runs_total",
    "pullcache_gc_reclaimed_bytes_total",
    "pullcache_store_max_bytes",
}
HISTOGRAMS = {"pullcache_http_request_duration_seconds", "pullcache_upstream_request_duration_seconds"}
ALLOWED_METRICS = (
    CONTRACT_METRICS
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | {"up"}
)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


# ------------------------------------------------------------------------------------- helpers

def _files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(DEPLOY)) for p in paths]


def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)


_PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, range/subquery brackets and grouping label lists are removed; what
    is left that looks like an identifier, is not a keyword and is not called like a function is
    a metric name.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", text):
        name = match.group(0)
        if name.lower() in _PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[match.end():]):
            continue  # a function or an aggregation
        names.add(name)
    return names


def _substitute_grafana_variables(expr: str) -> str:
    """Replace Grafana's variables with values Prometheus accepts, to check the PromQL itself."""
    values = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "instance": ".*"}

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in _dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p.get("targets", []) if t.get("expr")]


def _panel(title: str) -> dict:
    matches = [p for p in _panels() if p["title"] == title]
    assert len(matches) == 1, f"expected one panel titled {title!r}, found {len(matches)}"
    return matches[0]


def _alert_rules() -> list[dict]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def _alert(name: str) -> dict:
    matches = [r for r in _alert_rules() if r["alert"] == name]
    assert len(matches) == 1, f"expected one alert {name!r}, found {len(matches)}"
    return matches[0]


def _configmap_proxy_yml() -> str:
    return _load_yaml(K8S / "base" / "configmap.yaml")["data"]["proxy.yml"]


def _dockerfile_instructions(stage: str = "all") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped.
    stage="final" keeps only those after the last FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if stage == "final":
        last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
        instructions = instructions[last_from:]
    return instructions


def _dockerfile(keyword: str, stage: str = "all") -> list[str]:
    return [args for k, args in _dockerfile_instructions(stage) if k == keyword]


def _service(key: str) -> list[str]:
    return parse_unit()["Service"].get(key, [])


def _mirror_hostport() -> str:
    """The mirror address of Docker's daemon.json, which the other clients must agree with."""
    (mirror,) = json.loads((CLIENTS / "docker" / "daemon.json").read_text())["registry-mirrors"]
    return mirror.split("://", 1)[1].rstrip("/")


def _compose() -> dict:
    return _load_yaml(COMPOSE)


# ------------------------------------------------------------------------ every file parses

@pytest.mark.parametrize("path", _files(".yml", ".yaml"), ids=_ids(_files(".yml", ".yaml")))
def test_yaml_file_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"


@pytest.mark.parametrize("path", _files(".json"), ids=_ids(_files(".json")))
def test_json_file_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


@pytest.mark.parametrize("path", _files(".toml", ".conf"), ids=_ids(_files(".toml", ".conf")))
def test_toml_file_parses(path):
    assert tomllib.loads(path.read_text())


def test_metric_name_extractor_finds_selected_metrics_only():
    expr = ('histogram_quantile(0.95, sum by (le, upstream) (rate(pullcache_upstream_request_duration_seconds_bucket'
            '{instance=~"$instance", code=~"5..|timeout"}[$__rate_interval] offset 5m))) / on (job) group_left(x) '
            'max without (origin) (up{job="pullcache"} > bool 1e3) and pulcache_typo')
    assert metric_names(expr) == {"pullcache_upstream_request_duration_seconds_bucket", "up", "pulcache_typo"}


# ---------------------------------------------------------------------------- alert rules

def test_alert_rules_pass_promtool_check_rules():
    result = _promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests():
    result = _promtool("test", "rules", PROMETHEUS_DIR / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert, metric", [
    ("PullcacheDown", "up"),
    ("PullcacheHitRatioLow", "pullcache_cache_requests_total"),
    ("PullcacheUpstreamErrors", "pullcache_upstream_requests_total"),
    ("PullcacheUpstreamRateLimitLow", "pullcache_upstream_ratelimit_remaining"),
    ("PullcacheStoreNearBound", "pullcache_store_max_bytes"),
])
def test_required_alert_watches_its_metric(alert, metric):
    assert metric in metric_names(_alert(alert)["expr"])


def test_every_alert_has_severity_summary_and_description():
    for rule in _alert_rules():
        assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}, rule["alert"]
        assert rule.get("annotations", {}).get("summary"), rule["alert"]
        assert rule.get("annotations", {}).get("description"), rule["alert"]


def test_alert_expressions_use_only_contract_metrics():
    unknown = {r["alert"]: metric_names(r["expr"]) - ALLOWED_METRICS for r in _alert_rules()}
    assert not {k: v for k, v in unknown.items() if v}


def test_upstream_errors_alert_counts_5xx_429_and_non_http_failures_but_not_404():
    selector = re.search(r'code=~"([^"]+)"', _alert("PullcacheUpstreamErrors")["expr"]).group(1)
    def matches(code: str) -> bool:
        return re.fullmatch(selector, code) is not None  # Prometheus anchors regexes
    assert all(matches(c) for c in ("500", "502", "503", "429", "error"))
    assert not any(matches(c) for c in ("200", "206", "304", "401", "404"))


# ------------------------------------------------------------------------------ prometheus.yml

def test_prometheus_config_passes_promtool_check_config():
    result = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def _offered_block(text: str, first: str):
    """The YAML a comment offers to uncomment: the line `# <first>` and the `#   ...` lines under it."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index(f"# {first}")
    block = [first]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    return yaml.safe_load("\n".join(block))


def test_prometheus_basic_auth_the_config_offers_passes_promtool(tmp_path):
    """With auth.pull: authenticated, /metrics needs credentials: the offered block must be valid as is."""
    offered = _offered_block(PROMETHEUS_CONFIG.read_text(), "basic_auth:")["basic_auth"]
    assert set(offered) == {"username", "password_file"}
    (tmp_path / "password").write_text("secret\n")
    config = _load_yaml(PROMETHEUS_CONFIG)
    config["rule_files"] = [str(ALERTS)]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pullcache"]
    job["basic_auth"] = {**offered, "password_file": str(tmp_path / "password")}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_pullcache_metrics_on_the_compose_service():
    (job,) = [j for j in _load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "pullcache"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"pullcache:{PORT}"]
    assert "pullcache" in _compose()["services"]


# ---------------------------------------------------------------------------- grafana dashboard

@pytest.mark.parametrize("title, metric, fragment", [
    ("Cache hit ratio", "pullcache_cache_requests_total", 'result="hit"'),
    ("Bytes saved", "pullcache_bytes_served_total", 'source="cache"'),
    ("Upstream latency", "pullcache_upstream_request_duration_seconds_bucket", "histogram_quantile("),
    ("Upstream errors", "pullcache_upstream_requests_total", 'code=~"5..|429'),
    ("Rate-limit remaining", "pullcache_upstream_ratelimit_remaining", ""),
    ("Store size vs bound", "pullcache_store_bytes", ""),
    ("Store size vs bound", "pullcache_store_max_bytes", ""),
    ("Evictions", "pullcache_evictions_total", ""),
    ("Evictions", "pullcache_evicted_bytes_total", ""),
    ("GC runs", "pullcache_gc_runs_total", ""),
])
def test_dashboard_panel_shows_its_metric(title, metric, fragment):
    exprs = [t["expr"] for t in _panel(title)["targets"]]
    assert any(metric in metric_names(e) and fragment in e for e in exprs), exprs


def test_dashboard_hit_ratio_divides_hits_by_all_cache_requests():
    (expr,) = [t["expr"] for t in _panel("Cache hit ratio")["targets"]]
    numerator, denominator = expr.split(" / ")
    assert 'result="hit"' in numerator and "result" not in denominator
    assert metric_names(denominator) == {"pullcache_cache_requests_total"}


def test_dashboard_expressions_use_only_contract_metrics():
    unknown = [(title, metric_names(e) - ALLOWED_METRICS) for title, e in _dashboard_exprs()]
    assert not [u for u in unknown if u[1]]


def test_dashboard_covers_every_contract_metric():
    used = set().union(*(metric_names(e) for _, e in _dashboard_exprs()))
    families = {re.sub(r"_bucket$", "", m) for m in used}  # a histogram is shown through its buckets
    assert CONTRACT_METRICS - families == set()


def test_dashboard_expressions_are_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:panel_{i}", "expr": _substitute_grafana_variables(expr)}
             for i, (_, expr) in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_instance_variable_queries_a_contract_metric():
    (variable,) = [v for v in _dashboard()["templating"]["list"] if v["name"] == "instance"]
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    selector = re.fullmatch(r"label_values\((.+),\s*instance\)", query).group(1)
    assert metric_names(selector) <= ALLOWED_METRICS


# Grafana's built-in panel plugins (a dashboard naming another type needs that plugin installed).
GRAFANA_PANEL_TYPES = {"row", "stat", "timeseries", "gauge", "bargauge", "table", "text", "heatmap",
                       "piechart", "state-timeline", "status-history", "barchart", "histogram", "logs"}


def test_dashboard_panels_have_the_fields_grafanas_schema_requires():
    """Grafana's dashboard schema (v39): an integer id, a known type, a title, and a gridPos of
    integers on the 24-column grid; each query of a panel has its own refId."""
    for panel in _panels():
        assert isinstance(panel["id"], int) and panel["type"] in GRAFANA_PANEL_TYPES, panel.get("title")
        assert isinstance(panel["title"], str) and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel["type"] == "row" or ref_ids or panel["type"] == "text", panel["title"]


def test_dashboard_panel_ids_are_unique():
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_go_to_the_provisioned_datasource():
    (datasource,) = _load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    (variable,) = [v for v in _dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == datasource["type"] == "prometheus"
    assert variable["current"]["value"] == datasource["uid"]
    for panel in _panels():
        for t in panel.get("targets", []):
            assert t["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]


def test_grafana_datasource_points_at_the_compose_prometheus():
    (datasource,) = _load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]


def test_grafana_dashboard_provider_reads_where_compose_mounts_the_dashboard():
    (provider,) = _load_yaml(PROVISIONING / "dashboards" / "pullcache.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in _compose()["services"]["grafana"]["volumes"])
    assert mounts["./grafana/pullcache.json"] == f"{provider['options']['path']}/pullcache.json"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ------------------------------------------------------------------------------ docker compose

def test_compose_builds_pullcache_from_the_repository_root_with_deploy_dockerfile():
    build = _compose()["services"]["pullcache"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_bind_mount_sources_exist():
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def test_compose_mounts_pullcache_config_and_data_where_the_image_expects_them():
    volumes = _compose()["services"]["pullcache"]["volumes"]
    targets = {v.split(":")[1] for v in volumes}
    assert {CONFIG_PATH, STORAGE_PATH} <= targets
    assert f"{PORT}:{PORT}" in _compose()["services"]["pullcache"]["ports"]


# ------------------------------------------------------------------------------------ Dockerfile

def test_dockerfile_final_stage_is_python_311_slim():
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in _dockerfile("ARG") if "=" in a}
    final_from = _dockerfile("FROM", "final")[0].split()[0]
    assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final_from) == "python:3.11-slim"


# ------------------------------------------------------------------------------------- kubernetes
# (rendered, schema-validated and run: tests/test_deploy_k8s.py and tests/test_deploy_image.py)

def test_k8s_servicemonitor_offers_basic_auth_from_a_secret():
    """With auth.pull: authenticated, /metrics needs credentials: the Operator reads them from a Secret."""
    offered = _offered_block((K8S / "base" / "servicemonitor.yaml").read_text(), "basicAuth:")["basicAuth"]
    assert set(offered) == {"username", "password"}
    for ref in offered.values():
        assert set(ref) == {"name", "key"}
    assert offered["username"]["name"] == offered["password"]["name"]


# ------------------------------------------------------------------------ shipped proxy.yml files

@pytest.mark.parametrize("name", ["deploy/proxy.yml", "deploy/k8s/base/configmap.yaml"])
def test_shipped_config_is_accepted_by_pullcache(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from pullcache.config import build_config
    from pullcache.upstream.pool import Upstreams

    text = (DEPLOY / "proxy.yml").read_text() if name == "deploy/proxy.yml" else _configmap_proxy_yml()
    config = build_config(yaml.safe_load(text))
    assert config.storage.path == STORAGE_PATH
    assert config.port == PORT
    assert Upstreams(config.upstreams).default.name == "docker.io"
    assert {u.name for u in config.upstreams} == UPSTREAMS


# ---------------------------------------------------------------------------------------- systemd

def test_systemd_unit_writes_only_its_state_directory():
    assert _service("StateDirectory") == ["pullcache"]
    assert _service("ProtectSystem") == ["strict"]
    assert _service("ReadWritePaths") == [STORAGE_PATH]


def test_systemd_unit_runs_unprivileged():
    assert _service("DynamicUser") == ["yes"] or _service("User") not in ([], ["root"])
    assert _service("NoNewPrivileges") == ["yes"]
    assert _service("CapabilityBoundingSet") == [""]


def test_systemd_unit_restarts_on_failure_and_is_installable():
    assert _service("Restart") == ["on-failure"]
    assert parse_unit()["Install"]["WantedBy"] == ["multi-user.target"]


# ---------------------------------------------------------------------------------------- clients

def test_podman_registries_conf_mirrors_each_registry_under_its_path_prefix():
    config = tomllib.loads((CLIENTS / "podman" / "registries.conf").read_text())
    registries = {r["prefix"]: r for r in config["registry"]}
    assert set(registries) == UPSTREAMS
    for prefix, registry in registries.items():
        (mirror,) = registry["mirror"]
        assert mirror["location"] == f"{_mirror_hostport()}/{prefix}"
        assert mirror["insecure"] is True  # the example mirror speaks plain HTTP


async def _code_of_an_upstream_request_without_an_http_answer(port: int) -> str:
    """The `code` label pullcache records when an upstream cannot be reached at all."""
    from pullcache import metrics
    from pullcache.config import UpstreamConfig
    from pullcache.upstream.client import UpstreamClient
    from pullcache.upstream.errors import UpstreamUnavailable

    client = UpstreamClient(UpstreamConfig(name=f"refused-{port}", url=f"http://127.0.0.1:{port}"))
    await client.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            await client.head_blob("library/alpine", "sha256:" + "0" * 64)
    finally:
        await client.close()
    (code,) = {sample.labels["code"] for family in metrics.upstream_requests.collect() for sample in family.samples
               if sample.labels.get("upstream") == client.name}
    return code


async def test_readme_names_the_code_upstream_failures_without_a_status_are_counted_under(unused_tcp_port):
    code = await _code_of_an_upstream_request_without_an_http_answer(unused_tcp_port)
    assert f'`code="{code}"`' in (DEPLOY / "README.md").read_text()


def test_readme_documents_every_piece():
    readme = (DEPLOY / "README.md").read_text()
    for piece in ("docker build -f deploy/Dockerfile", "docker-compose.yml", "kubectl apply -k deploy/k8s",
                  "pullcache.service", "daemon.json", "hosts.toml", "registries.conf", "alerts.yml"):
        assert piece in readme, piece


def _readme_client_row(client: str) -> str:
    (row,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| {client} |")]
    return row


@pytest.mark.parametrize("client", ["Docker", "containerd", "podman / skopeo / CRI-O", "push"])
def test_readme_client_rows_name_the_mirror_address_of_deploy_clients(client):
    addresses = set(re.findall(r"[\w.-]+:5000", _readme_client_row(client)))
    assert addresses == {_mirror_hostport()}


def test_readme_podman_row_is_the_recipe_of_registries_conf():
    row = _readme_client_row("podman / skopeo / CRI-O")
    config = tomllib.loads((CLIENTS / "podman" / "registries.conf").read_text())
    mirrors = {registry["prefix"]: registry["mirror"][0] for registry in config["registry"]}
    shown = re.findall(r'\[\[registry\]\] prefix = "([^"]+)".*?\[\[registry\.mirror\]\] location = "([^"]+)"', row)
    assert shown, row
    for prefix, location in shown:
        assert location == mirrors[prefix]["location"]
    assert ("insecure = true" in row) == all(mirror.get("insecure") for mirror in mirrors.values())
    assert all(f"`{prefix}`" in row or f'"{prefix}"' in row for prefix in mirrors), row
