#!/usr/bin/env python3
"""Regenerate data/genesys-operations.tsv from the Genesys Cloud Python SDK.

Every API method of PureCloudPlatformClientV2 (generated from Genesys' OpenAPI v2 spec)
ends in a call such as

    response = self.api_client.call_api(resource_path, 'GET', ...)

after assigning `resource_path = '/api/v2/users/{userId}'.replace('{format}', 'json')`.
This script downloads the SDK wheel from PyPI (no install, no dependencies), reads
`PureCloudPlatformClientV2/apis/*.py` from it, pairs each `call_api` method with the
`resource_path` assigned before it, dedupes (one operation appears under several API
classes) and writes `METHOD<TAB>PATH` lines, no header, sorted by path then method.

Usage:
    scripts/regen-operations.py [VERSION] [-o OUT]     # default 269.0.0 to stdout
    scripts/regen-operations.py 269.0.0 | diff - data/genesys-operations.tsv
"""

import argparse
import glob
import re
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "PureCloudPlatformClientV2"
DEFAULT_VERSION = "269.0.0"

RESOURCE_PATH = re.compile(r"""resource_path\s*=\s*['"]([^'"]+)['"]""")
CALL_API = re.compile(r"""call_api\(\s*resource_path\s*,\s*['"]([A-Z]+)['"]""")


def download_wheel(version: str, dest: str) -> str:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary", ":all:", "--dest", dest, f"{PACKAGE}=={version}",
        ],
        check=True,
    )
    wheels = glob.glob(f"{dest}/*.whl")
    if len(wheels) != 1:
        sys.exit(f"expected one wheel in {dest}, found {wheels}")
    return wheels[0]


def operations(wheel: str) -> tuple[set[tuple[str, str]], int]:
    """(unique (method, path) pairs, number of SDK methods seen)."""
    ops: set[tuple[str, str]] = set()
    calls = 0
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(
            n for n in zf.namelist()
            if re.fullmatch(rf"{PACKAGE}/apis/[^/]+\.py", n) and not n.endswith("__init__.py")
        )
        if not names:
            sys.exit(f"no {PACKAGE}/apis/*.py in {wheel}")
        for name in names:
            text = zf.read(name).decode("utf-8")
            # Walk the file in order: a call_api uses the most recent resource_path.
            events = [(m.start(), "path", m.group(1)) for m in RESOURCE_PATH.finditer(text)]
            events += [(m.start(), "call", m.group(1)) for m in CALL_API.finditer(text)]
            current = None
            for _, kind, value in sorted(events):
                if kind == "path":
                    current = value.replace("{format}", "json")
                else:
                    if current is None:
                        sys.exit(f"{name}: call_api {value} before any resource_path")
                    ops.add((value, current))
                    calls += 1
                    current = None
    return ops, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("version", nargs="?", default=DEFAULT_VERSION)
    ap.add_argument("-o", "--out", help="write here instead of stdout")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ops, calls = operations(download_wheel(args.version, tmp))

    lines = [f"{m}\t{p}\n" for m, p in sorted(ops, key=lambda mp: (mp[1], mp[0]))]
    print(f"{PACKAGE} {args.version}: {calls} SDK methods -> {len(lines)} unique operations",
          file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(lines)
    else:
        sys.stdout.writelines(lines)


if __name__ == "__main__":
    main()
