"""Drive `ringmaster hub serve` with Azure's official Python service SDK (azure-iot-hub 2.7.0),
unpatched, the way a user's script would.

Environment: HUB_CONNECTION_STRING (the server's iothubowner connection string) and
REQUESTS_CA_BUNDLE (the server's generated CA). Arguments: scenario names to run (all when
none). Prints "ok: <step>" per step; any failure raises and exits non-zero.
"""

import base64
import os
import sys

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    ExportImportDevice,
    QuerySpecification,
    Twin,
)
from msrest.exceptions import HttpOperationError

CS = os.environ["HUB_CONNECTION_STRING"]


def ok(step):
    print("ok: " + step, flush=True)


def key():
    return base64.b64encode(os.urandom(32)).decode()


def expect_status(status, fn, *args):
    try:
        fn(*args)
    except HttpOperationError as e:
        got = e.response.status_code
        assert got == status, "expected HTTP %d, got %d: %s" % (status, got, e.response.text)
        return e
    raise AssertionError("expected HTTP %d, the call succeeded" % status)


def devices(reg):
    d = reg.create_device_with_sas("sdk-dev-1", key(), key(), "enabled")
    assert d.device_id == "sdk-dev-1" and d.etag, d
    ok("create a device")
    e = expect_status(409, reg.create_device_with_sas, "sdk-dev-1", key(), key(), "enabled")
    assert "DeviceAlreadyExists" in e.response.text
    ok("creating it again is 409 DeviceAlreadyExists")
    got = reg.get_device("sdk-dev-1")
    assert got.etag == d.etag and got.status == "enabled"
    upd = reg.update_device_with_sas("sdk-dev-1", got.etag, key(), key(), "disabled")
    assert upd.status == "disabled" and upd.etag != got.etag
    ok("update a device with its etag")

    entries = [
        ExportImportDevice(id="sdk-bulk-%03d" % i, import_mode="create", status="enabled",
                           tags={"fleet": "sdk", "ring": "canary" if i < 5 else "broad"})
        for i in range(40)
    ]
    res = reg.bulk_create_or_update_devices(entries)
    assert res.is_successful, res.errors
    ok("bulk-create 40 devices")
    dup = reg.bulk_create_or_update_devices([ExportImportDevice(id="sdk-bulk-000", import_mode="create")])
    assert not dup.is_successful and dup.errors[0].error_code == "DeviceAlreadyExists", dup
    ok("bulk-create of an existing device reports DeviceAlreadyExists")
    stats = reg.get_device_registry_statistics()
    assert stats.total_device_count == 41 and stats.disabled_device_count == 1, stats
    ok("registry statistics")


def twins(reg):
    t = reg.get_twin("sdk-bulk-000")
    assert t.device_id == "sdk-bulk-000" and t.etag
    assert t.tags["ring"] == "canary", t.tags
    ok("read a twin's tags")
    t2 = reg.update_twin("sdk-bulk-000", Twin(tags={"ring": "early", "site": "lab"}), t.etag)
    assert t2.tags == {"fleet": "sdk", "ring": "early", "site": "lab"}, t2.tags
    assert t2.etag != t.etag
    ok("update twin tags with the twin's etag")
    expect_status(412, reg.update_twin, "sdk-bulk-000", Twin(tags={"ring": "x"}), t.etag)
    assert reg.get_twin("sdk-bulk-000").tags["ring"] == "early"
    ok("a stale twin etag is 412 and changes nothing")
    t3 = reg.update_twin("sdk-bulk-000", Twin(tags={"ring": "canary", "site": None}))
    assert t3.tags == {"fleet": "sdk", "ring": "canary"}, t3.tags
    ok("null removes a tag")
    expect_status(404, reg.get_twin, "no-such-device")
    ok("a missing twin is 404")


def queries(reg):
    spec = QuerySpecification(query="SELECT * FROM devices WHERE tags.fleet = 'sdk'")
    seen, pages, token = [], 0, None
    while True:
        r = reg.query_iot_hub(spec, token, 7)
        pages += 1
        assert r.type == "twin", r.type
        seen += [t.device_id for t in r.items]
        token = r.continuation_token
        if not token:
            break
        assert pages < 20, "paging does not end"
    assert len(seen) == 40 and len(set(seen)) == 40, seen
    assert pages == 6, pages
    ok("query twins across %d pages" % pages)
    # The SDK reads every row as a Twin, so a projection onto deviceId is what it can show.
    r = reg.query_iot_hub(QuerySpecification(query="SELECT deviceId FROM devices WHERE tags.ring = 'canary'"))
    assert r.type == "raw", r.type
    assert sorted(t.device_id for t in r.items) == ["sdk-bulk-%03d" % i for i in range(5)], r.items
    assert r.continuation_token is None
    ok("projection query, one page")


def configurations(cfgm, reg):
    cfg = Configuration(
        id="sdk-fw-200",
        schema_version="1.0",
        labels={"rollout": "fw"},
        target_condition="tags.ring = 'canary'",
        priority=10,
        content=ConfigurationContent(device_content={"properties.desired.firmware": {"version": "2.0.0"}}),
        metrics=ConfigurationMetrics(queries={
            "current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.0.0'"}),
    )
    created = cfgm.create_configuration(cfg)
    assert created.id == "sdk-fw-200" and created.etag, created
    assert created.system_metrics.queries["targetedCount"], created.system_metrics
    ok("create a configuration")
    expect_status(409, cfgm.create_configuration, cfg)
    ok("creating it again is 409")
    got = cfgm.get_configuration("sdk-fw-200")
    assert got.etag == created.etag and got.target_condition == "tags.ring = 'canary'"
    twin = reg.get_twin("sdk-bulk-000")
    assert twin.properties.desired["firmware"]["version"] == "2.0.0", twin.properties.desired
    ok("get it; the canary twins have its content")

    got.target_condition = "tags.ring = 'canary' OR tags.ring = 'broad'"
    got.priority = 20
    upd = cfgm.update_configuration(got, got.etag)  # the SDK sends this etag unquoted
    assert upd.etag != created.etag and upd.priority == 20
    ok("update it with its etag")
    got.priority = 30
    expect_status(412, cfgm.update_configuration, got, created.etag)
    ok("a stale etag is 412 (strict If-Match)")
    assert any(c.id == "sdk-fw-200" for c in cfgm.get_configurations())
    ok("list configurations")

    r = cfgm.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.ring = 'canary'",
        custom_metric_queries={"m": "SELECT deviceId FROM devices WHERE properties.reported.x = 1"}))
    assert not r.target_condition_error and not r.custom_metric_query_errors, r
    r = cfgm.test_configuration_queries(ConfigurationQueriesTestInput(
        target_condition="tags.ring = = 'x'", custom_metric_queries={"bad": "SELEKT"}))
    assert r.target_condition_error and r.custom_metric_query_errors["bad"], r
    ok("test queries")

    cfgm.delete_configuration("sdk-fw-200")
    expect_status(404, cfgm.get_configuration, "sdk-fw-200")
    ok("delete it")


def cleanup(reg):
    reg.delete_device("sdk-dev-1")
    expect_status(404, reg.get_device, "sdk-dev-1")
    ok("delete a device")


def main(names):
    reg = IoTHubRegistryManager.from_connection_string(CS)
    cfgm = IoTHubConfigurationManager.from_connection_string(CS)
    steps = {
        "devices": lambda: devices(reg),
        "twins": lambda: twins(reg),
        "queries": lambda: queries(reg),
        "configurations": lambda: configurations(cfgm, reg),
        "cleanup": lambda: cleanup(reg),
    }
    for name in names or list(steps):
        steps[name]()
    print("all scenarios passed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
