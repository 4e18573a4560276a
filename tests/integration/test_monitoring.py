"""The monitoring profile of docker-compose.yml: Prometheus scrapes the broker service's
/metrics, Grafana is provisioned with that Prometheus and the broker's dashboard, and
every series the dashboard queries (with the labels and label values it selects) is
one a running broker exposes after real traffic."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, sample
from tests.dcmtk import findscu
from tests.ehr import EHREndpoint
from tests.integration.compose import compose_config, published
from tests.integration.hl7util import send, set_field
from tests.integration.test_outbound import outbox, perform
from tests.workflow import destination, wait_until

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mwl-broker.json"
# PromQL words that are not metric names (functions are told by their parenthesis).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless"}


def _mounted(service: dict[str, Any], source: str) -> str:
    """Where ``service`` mounts the repository path ``source``."""
    targets = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == str(REPO / source)]
    assert targets, f"{source} is not mounted"
    return targets[0]


def test_prometheus_and_grafana_are_wired_to_the_broker_service() -> None:
    services = compose_config()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert _mounted(prometheus, "deploy/prometheus/prometheus.yml") == (
        "/etc/prometheus/prometheus.yml")
    [job] = scrape["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [target] = [t for config in job["static_configs"] for t in config["targets"]]
    host, port = target.split(":")
    assert host in services and int(port) in published(services[host])
    assert f":{port}/" in str(services[host]["healthcheck"]["test"])  # the console's port

    provisioning = _mounted(grafana, "deploy/grafana/provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    [source] = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" /
                               "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090" in str(prometheus["healthcheck"]["test"])
    [provider] = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" /
                                 "mwl-broker.yml").read_text())["providers"]
    assert provider["options"]["path"] == _mounted(grafana, "deploy/grafana/dashboards")
    dashboard = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}


def selectors(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], list[str]]:
    """The metric selectors of a PromQL expression, each (metric name, [(label, operator,
    value)]), and the labels it groups by."""
    grouping: list[str] = []

    def group(match: re.Match[str]) -> str:
        grouping.extend(label.strip() for label in match.group(1).split(","))
        return " "

    expr = re.sub(r"\b(?:by|without)\s*\(([^)]*)\)", group, expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    found = []
    for name, body, call in re.findall(r"([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        if call or name in KEYWORDS:
            continue
        found.append((name, re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body)))
    return found, grouping


def exposed_series(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label -> the values it takes, from a /metrics scrape."""
    series: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = series.setdefault(s.name, {})
            for label, value in s.labels.items():
                labels.setdefault(label, set()).add(value)
    return series


@pytest.mark.dcmtk
def test_the_dashboard_queries_series_the_broker_exposes(make_broker: Any,
                                                         ehr: EHREndpoint) -> None:
    app = make_broker(outbound_destinations=destination(ehr.port))
    # Traffic for every series and label value the dashboard selects: an order applied
    # and performed (order status sent to the EHR), one failed (AE), one rejected (AR),
    # a worklist query, and an association refused (a called AE title it does not use).
    perform(app)
    [failed] = send(app.mllp_port, set_field(set_field(sample("05"), "PID", 3, ""),
                                             "MSH", 10, "ORM-NO-PID"))
    [rejected] = send(app.mllp_port, set_field(sample("03"), "MSH", 11, "X"))
    assert (failed.code, rejected.code) == ("AE", "AR")
    findscu(app.dicom_port, ["AccessionNumber=ACC0001"])
    refused = subprocess.run(["echoscu", "-aet", "CT01_AE", "-aec", "NOT_THE_BROKER",
                              "127.0.0.1", str(app.dicom_port)], capture_output=True,
                             timeout=60)
    assert refused.returncode != 0
    wait_until(lambda: {m.status for m in outbox(app)} == {"sent"}, what="order status sent")

    def scrape() -> str:
        response = httpx.get(f"http://127.0.0.1:{app.http_port}/metrics", timeout=30)
        assert response.status_code == 200
        return response.text

    # Refusals are counted within a second of the refusal.
    wait_until(lambda: "mwlb_dicom_associations_refused_total{" in scrape(),
               what="the refusal counted")
    series = exposed_series(scrape())

    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = 0
    for panel in panels:
        for target in panel["targets"]:
            found, grouping = selectors(target["expr"])
            assert found, f"{panel['title']}: no metric in {target['expr']}"
            for name, matchers in found:
                where = f"{panel['title']}: {name}"
                assert name in series, f"{where} is not exposed ({sorted(series)})"
                for label, operator, value in matchers:
                    assert label in series[name], f"{where} has no label {label}"
                    values = value.split("|") if "~" in operator else [value]
                    assert set(values) <= series[name][label], (
                        f"{where}{{{label}}}: {values} not in {series[name][label]}")
                queried += 1
            for label in grouping:
                assert any(label in series[name] for name, _ in found), (
                    f"{panel['title']}: no metric of {target['expr']} has label {label}")
    assert queried >= len(panels)
