#!/usr/bin/env python3
"""Prints lab-out/results.json (or the files given) as the markdown table of docs/vfio-lab.md."""
import json
import sys

COLS = [
    ("close-to-group-released-ms", "observed close → GROUP_RELEASED at client (ms)"),
    ("device-deleted-to-group-released-ms", "DEVICE_DELETED → GROUP_RELEASED (ms)"),
    ("waited-ms", "waited-ms (sidecar)"),
    ("device-deleted-minus-close-ms", "DEVICE_DELETED − observed close (ms)"),
]

paths = sys.argv[1:] or ["lab-out/results.json"]
print("| run | scenario | result | s | " + " | ".join(c[1] for c in COLS) + " | other |")
print("|---|---|---|---|" + "---|" * len(COLS) + "---|")
for path in paths:
    r = json.load(open(path))
    label = r["mode"] + ("" if r["mode"] == "direct" else " (" + r["sidecar"].rsplit("/", 2)[-2] + "/" + r["sidecar"].rsplit("/", 1)[-1] + ")")
    for name, s in r["scenarios"].items():
        f = s["figures"]
        other = ", ".join(f"{k} {v}" for k, v in f.items() if k not in dict(COLS) and not isinstance(v, (list, dict)))
        print(f"| {label} | {name} | {s['status']} | {s['seconds']} | "
              + " | ".join(str(f.get(k, "–")) for k, _ in COLS) + f" | {other} |")
