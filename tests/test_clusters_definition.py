"""Cluster definitions: what is refused (named), the start order, and templates."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from cloudpilot.domain.clusters import (
    ClusterDefinition,
    ClusterDefinitionError,
    InstanceReport,
    check_definition,
    find_cycle,
    references,
    render,
    service_values,
    start_order,
)


def definition(**services: dict[str, Any]) -> ClusterDefinition:
    return ClusterDefinition.model_validate({"name": "c", "cloud": "local", "services": services})


def refused(defn: ClusterDefinition) -> ClusterDefinitionError:
    with pytest.raises(ClusterDefinitionError) as info:
        check_definition(defn)
    return info.value


def test_head_and_workers_start_head_first() -> None:
    defn = definition(worker={"depends_on": ["head"], "min": 2, "max": 5}, head={})
    assert check_definition(defn) == ["head", "worker"]
    assert defn.services["head"].upper == 1  # max defaults to min


def test_a_longer_chain_starts_in_dependency_order_ties_in_definition_order() -> None:
    defn = definition(
        web={"depends_on": ["api"]}, db={}, api={"depends_on": ["db", "cache"]}, cache={}, batch={"depends_on": ["db"]}
    )
    assert start_order(defn) == ["db", "cache", "api", "web", "batch"]


@pytest.mark.parametrize(
    ("services", "cycle", "field"),
    [
        ({"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}, "a -> b -> a", "services.a.depends_on"),
        ({"a": {"depends_on": ["a"]}}, "a -> a", "services.a.depends_on"),
        (
            {"x": {}, "a": {"depends_on": ["x", "c"]}, "b": {"depends_on": ["a"]}, "c": {"depends_on": ["b"]}},
            "a -> c -> b -> a",
            "services.a.depends_on",
        ),
    ],
)
def test_a_dependency_cycle_is_refused_and_named(services: dict, cycle: str, field: str) -> None:
    error = refused(definition(**services))
    assert f"dependency cycle: {cycle}" in str(error)
    assert error.field == field


def test_find_cycle_on_an_acyclic_graph() -> None:
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) == []


def test_an_unknown_dependency_is_refused_naming_it() -> None:
    error = refused(definition(worker={"depends_on": ["haed"]}, head={}))
    assert error.field == "services.worker.depends_on"
    assert "unknown service 'haed'" in str(error) and "worker, head" in str(error)


def test_bounds_must_be_in_order() -> None:
    error = refused(definition(worker={"min": 3, "max": 2}))
    assert error.field == "services.worker.max"
    assert "max (2) is below min (3)" in str(error)
    with pytest.raises(ValidationError):
        definition(worker={"min": -1})
    with pytest.raises(ValidationError):
        definition(worker={"min": 1, "max": 100_000})


def test_offerings_and_clouds() -> None:
    assert refused(definition(w={"flavor": "small", "cores": 2})).field == "services.w.flavor"
    no_cloud = ClusterDefinition.model_validate({"name": "c", "services": {"w": {}}})
    assert refused(no_cloud).field == "services.w.cloud"
    per_service = ClusterDefinition.model_validate({"name": "c", "services": {"w": {"cloud": "x"}}})
    assert check_definition(per_service) == ["w"]


def test_unknown_keys_and_reserved_names_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        definition(w={"replicas": 3})
    assert info.value.errors()[0]["loc"] == ("services", "w", "replicas")
    assert refused(definition(self={})).field == "services.self"
    with pytest.raises(ValidationError):
        ClusterDefinition.model_validate({"name": "bad name", "cloud": "l", "services": {"w": {}}})


def template(text: str, **service: Any) -> ClusterDefinition:
    return definition(head={}, other={}, worker={"depends_on": ["head"], "context": {"template": text}, **service})


def test_templates_may_use_what_the_service_depends_on() -> None:
    text = "#cloud-config\nwrite_files: [{path: /etc/h, content: '{{ head.address }} {{head.ids}} {{ cluster.name }}'}]"
    assert check_definition(template(text)) == ["head", "other", "worker"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#!/bin/sh\necho {{ nobody.address }}", "unknown service 'nobody'"),
        ("#!/bin/sh\necho {{ other.address }}", "does not depend on 'other'"),
        ("#!/bin/sh\necho {{ head.adress }}", "unknown attribute 'adress'"),
        ("#!/bin/sh\necho {{ head }}", "is not a reference"),
        ("#!/bin/sh\necho {{ self.address }}", "use it in health_url"),
        ("echo no header", "must start with '#cloud-config'"),
    ],
)
def test_a_template_reference_that_cannot_be_filled_is_refused(text: str, message: str) -> None:
    error = refused(template(text))
    assert error.field == "services.worker.context.template"
    assert message in str(error)


def test_parts_and_health_urls_are_checked_too() -> None:
    parts = definition(head={}, w={"context": {"parts": [{"content_type": "text/x-shellscript", "content": "echo"}]}})
    assert refused(parts).field == "services.w.context.parts[0]"
    ref = definition(head={}, w={"context": {"parts": [{"content": "#cloud-config\n# {{ head.id }}"}]}})
    assert refused(ref).field == "services.w.context.parts[0].content"
    ok = definition(w={"health_url": "http://{{ self.address }}:{{ self.port }}/health"})
    assert check_definition(ok) == ["w"]
    assert refused(definition(w={"health_url": "ftp://{{ self.address }}/"})).field == "services.w.health_url"


def test_transitive_dependencies_may_be_referenced() -> None:
    web = {"depends_on": ["api"], "context": {"template": "#!/bin/sh\n{{ db.id }}"}}
    defn = definition(db={}, api={"depends_on": ["db"]}, web=web)
    assert check_definition(defn) == ["db", "api", "web"]


def test_render_substitutes_values_of_ready_instances_oldest_first() -> None:
    values = {
        "head": service_values(
            [("vm-aaa", InstanceReport("10.0.0.5", 4000)), ("vm-bbb", InstanceReport("fd00::1", 4001))]
        ),
        "cluster": {"id": "7", "name": "c"},
    }
    text = "{{ head.address }} {{head.addresses}} {{ head.endpoints }} {{ head.ids }} {{ head.count }} {{ cluster.id }}"
    assert render(text, values) == "10.0.0.5 10.0.0.5,fd00::1 10.0.0.5:4000,[fd00::1]:4001 vm-aaa,vm-bbb 2 7"
    assert references("{{ a.b }} and {{c.d}}") == [("a", "b"), ("c", "d")]
    assert service_values([])["address"] == ""


def test_reported_values_are_checked_before_they_go_into_other_vms_user_data() -> None:
    for address in ("10.0.0.1; rm -rf /", "head", "", "1.2.3.4\nruncmd: x"):
        with pytest.raises(ValueError):
            InstanceReport(address, 80)
    with pytest.raises(ValueError):
        InstanceReport("10.0.0.1", 0)
    assert InstanceReport("::1", 80).endpoint == "[::1]:80"


def test_a_service_may_start_with_more_than_its_minimum() -> None:
    assert definition(w={"min": 1, "instances": 2, "max": 5}).services["w"].initial == 2
    assert definition(w={"min": 2}).services["w"].initial == 2
    assert refused(definition(w={"min": 1, "instances": 6, "max": 5})).field == "services.w.instances"
