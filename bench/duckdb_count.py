#!/usr/bin/env python3
"""DuckDB reference for issue 13's first figure: the three-clause COUNT() over the same
generated twins as `ringmaster hub bench` (src/hub/bench.rs, `twin_doc`), as JSON text.

    python3 -m venv target/duckdb-venv && target/duckdb-venv/bin/pip install duckdb
    target/duckdb-venv/bin/python bench/duckdb_count.py 200000

Prints the best of 5 runs over the JSON column (json_extract_string) and over a table of
the extracted columns (what a columnar engine holds), with the matched count to compare
with the hub's.
"""
import json
import os
import sys
import tempfile
import time

import duckdb

SITES = 50


def twin(i):
    ring = "canary" if i % 100 <= 1 else "early" if i % 100 <= 19 else "broad"
    model = ["4000x", "5000x", "6000x"][i % 3]
    return {
        "deviceId": f"dev-{i:07}",
        "tags": {
            "env": "test" if i % 10 == 9 else "prod",
            "ring": ring,
            "model": model,
            "location": {"region": f"region-{i % 10}", "site": f"site-{(i // 7) % SITES:02}"},
        },
        "properties": {"desired": {
            "firmware": {"version": "2.4.0" if i % 5 == 0 else "2.3.0",
                         "url": f"https://fw.example.com/{model}/2.3.0.bin",
                         "checksum": f"{i * 2654435761:016x}"},
            "network": {"mtu": 1500, "dhcp": True, "ntp": "pool.ntp.org"},
        }},
    }


def best(con, sql, runs=5):
    t_best, out = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        out = con.execute(sql).fetchone()[0]
        t_best = min(t_best, time.perf_counter() - t)
    return out, t_best


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    con = duckdb.connect()
    with tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=False) as f:
        for i in range(n):
            f.write(json.dumps(twin(i)) + "\n")
    con.execute(f"CREATE TABLE twins AS SELECT json AS doc FROM read_ndjson_objects('{f.name}')")
    os.unlink(f.name)
    q = ("SELECT count(*) FROM twins WHERE json_extract_string(doc, '$.tags.env') = 'prod' "
         "AND json_extract_string(doc, '$.tags.ring') IN ('canary', 'early') "
         "AND json_extract_string(doc, '$.properties.desired.firmware.version') != '2.4.0'")
    m, s = best(con, q)
    print(f"DuckDB json_extract_string over JSON text, {n} twins: {m} matches, {s * 1e3:.2f} ms")
    con.execute("CREATE TABLE cols AS SELECT json_extract_string(doc, '$.tags.env') AS env, "
                "json_extract_string(doc, '$.tags.ring') AS ring, "
                "json_extract_string(doc, '$.properties.desired.firmware.version') AS fw FROM twins")
    m, s = best(con, "SELECT count(*) FROM cols WHERE env = 'prod' AND ring IN ('canary', 'early') AND fw != '2.4.0'")
    print(f"DuckDB over extracted columns, {n} twins: {m} matches, {s * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
