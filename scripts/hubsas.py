"""Shared by the drill (scripts/drill) and the benchmarks (bench/run, bench/run-dir): a
hub's service SAS token made from a connection string the way Azure's Python SDK makes it
(https://learn.microsoft.com/azure/iot-hub/authenticate-authorize-sas), and the connection
string `ringmaster hub serve --connection-string-file` writes (it never goes to a pipe).

    import sys; sys.path.insert(0, "<repo>/scripts"); from hubsas import sas, wait_connection_string
"""
import base64, hashlib, hmac, os, time, urllib.parse


def sas(cs, ttl=3600):
    """`SharedAccessSignature sr=..&sig=..&se=..&skn=..` for the connection string `cs`."""
    p = dict(x.split("=", 1) for x in cs.split(";"))
    sr = urllib.parse.quote_plus(p["HostName"])
    se = str(int(time.time()) + ttl)
    key = base64.b64decode(p["SharedAccessKey"])
    sig = base64.b64encode(hmac.new(key, f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={se}&skn={p['SharedAccessKeyName']}"


def wait_connection_string(path, proc=None, timeout=60):
    """The first line of `path` once `hub serve --connection-string-file path` wrote it;
    exits when `proc` ends first or after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            text = open(path).read().strip()
            if text:
                return text.splitlines()[0]
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"hub serve ended (status {proc.returncode}) before writing {path}")
        time.sleep(0.05)
    raise SystemExit(f"hub serve did not write {path} within {timeout}s")


if __name__ == "__main__":
    # `python3 scripts/hubsas.py FILE`: a token for the connection string in FILE (bench/run).
    import sys
    print(sas(wait_connection_string(sys.argv[1])))
