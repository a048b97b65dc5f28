#!/usr/bin/env python3
"""Checks that the workspace's declared rust-version is true for the locked
dependencies: no locked package may need a newer Rust than the workspace
says. (Clippy's incompatible_msrv lint checks our own use of std against
the same number.) Exits non-zero with the offending packages."""
import json
import subprocess
import sys


def key(version):
    # "1.88" and "1.88.0" are the same version.
    parts = [int(x) for x in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked"], text=True
    )
)
members = set(meta["workspace_members"])
declared = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(declared) != 1 or None in declared:
    sys.exit(f"workspace members disagree on rust-version: {sorted(map(str, declared))}")
msrv = declared.pop()
too_new = [
    f"{p['name']} {p['version']} needs Rust {p['rust_version']}"
    for p in meta["packages"]
    if p["id"] not in members
    and p.get("rust_version")
    and key(p["rust_version"]) > key(msrv)
]
if too_new:
    sys.exit(f"rust-version {msrv} is not true:\n  " + "\n  ".join(sorted(too_new)))
print(f"rust-version {msrv} covers every locked dependency")
