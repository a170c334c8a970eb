"""What the worst manifests cost to open: CPU time and memory of ``schema.load_json`` on crafted JSON up to the
reader's 16 MiB (target: each opened or refused in under 1 s and 300 MB)

    python bench/manifest_cost.py

Each case runs in its own process (peak RSS is per process): many small objects, lists, floats, strings or
keys up to the value bound, huge integers, a 16 MiB string (UTF-8, escaped, as a key), 8 million nested
brackets, a 16 MiB number. Prints per case the CPU seconds, the RSS added and what the reader said.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from nvp_rt import nvpfile, schema

LIMIT = nvpfile.MAX_MANIFEST_BYTES
VALUES = schema.MAX_JSON_VALUES
CASES = {
    "objects": lambda: b"[" + b"{}," * (VALUES // 2 - 2) + b"{}]",
    "lists": lambda: b"[" + b"[]," * (VALUES // 2 - 2) + b"[]]",
    "floats": lambda: b"[" + b"1.5," * (VALUES - 2) + b"1.5]",
    "strings": lambda: b"[" + b'"abcdefghijklm",' * (VALUES - 2) + b'"x"]',
    "keys": lambda: b"{" + b",".join(b'"k%07d":0' % i for i in range(VALUES - 2)) + b"}",
    "huge integers": lambda: b"[" + b",".join([b"9" * 4000] * 4000) + b"]",
    "16 MiB string": lambda: b'{"a":"' + ("\u20ac" * ((LIMIT - 10) // 3)).encode() + b'"}',
    "16 MiB escaped string": lambda: b'["' + b"\\u20ac" * ((LIMIT - 10) // 6) + b'"]',
    "16 MiB key": lambda: b'{"' + b"k" * (LIMIT - 10) + b'":1}',
    "8M nested brackets": lambda: b"[" * (LIMIT // 2) + b"]" * (LIMIT // 2),
    "16 MiB number": lambda: b"[" + b"1" * (LIMIT - 10) + b".0]",
}


def one(name: str) -> dict:
    data = CASES[name]()[:LIMIT]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.process_time()
    try:
        schema.load_json(data, "manifest")
        said = "accepted"
    except schema.NvpFormatError as e:
        said = str(e)[:100]
    return {
        "case": name,
        "mib": len(data) / 2**20,
        "cpu_s": time.process_time() - started,
        "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
        "said": said,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2])))
        return
    worst_s = worst_mb = 0.0
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        worst_s, worst_mb = max(worst_s, r["cpu_s"]), max(worst_mb, r["rss_mb"])
        print(f"{name:22s} {r['mib']:5.1f} MiB {r['cpu_s']:5.2f} s CPU +{r['rss_mb']:4.0f} MB  {r['said']}")
    print(f"worst: {worst_s:.2f} s of CPU, {worst_mb:.0f} MB")


if __name__ == "__main__":
    main()
