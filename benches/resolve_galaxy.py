#!/usr/bin/env python3
"""Time Galaxy's own `cached_mulled_singularity` resolve on a directory (for benches/resolve.sh).

    resolve_galaxy.py DIR [--warm N] REQ...

Builds Galaxy's ContainerRegistry from a `container_resolvers` config (`cache_directory: DIR`,
`cache_directory_cacher_type: dir_mtime`), resolves REQ... once (Galaxy lists and sorts DIR: the
cost of the first job after start or after a publish), then N more times from the cached
listing (every later job). Prints one JSON object with the seconds of each phase.
Run with the venv's python (tests/galaxy/setup-venv.sh).
"""

import json
import sys
import time

t_start = time.perf_counter()
from galaxy.tool_util.deps.containers import ContainerRegistry  # noqa: E402
from galaxy.tool_util.deps.dependencies import AppInfo, ToolInfo  # noqa: E402
from galaxy.tool_util.deps.requirements import ToolRequirement  # noqa: E402

t_import = time.perf_counter()


def main():
    args = sys.argv[1:]
    d = args.pop(0)
    warm = 0
    if args[:1] == ["--warm"]:
        warm = int(args[1])
        args = args[2:]
    reqs = []
    for r in args:
        name, sep, version = r.partition("=")
        reqs.append(ToolRequirement(name=name, type="package", version=version if sep else None))
    conf = [{"type": "cached_mulled_singularity", "cache_directory": d, "cache_directory_cacher_type": "dir_mtime"}]
    registry = ContainerRegistry(AppInfo(container_resolvers_config_dict=conf))
    tool = ToolInfo(requirements=reqs)

    def resolve():
        r = registry.resolve(["singularity"], tool, install=False)
        return r.container_description.identifier if r else None

    t0 = time.perf_counter()
    path = resolve()
    t1 = time.perf_counter()
    for _ in range(warm):
        resolve()
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "path": path,
                "import_s": round(t_import - t_start, 4),
                "first_resolve_s": round(t1 - t0, 4),
                "warm_resolve_ms": round((t2 - t1) / warm * 1000, 3) if warm else None,
                "warm_runs": warm,
            }
        )
    )


if __name__ == "__main__":
    main()
