#!/usr/bin/env python3
"""Galaxy's real resolvers against a depotfs mount (driven by tests/galaxy_mount.rs).

  on_mount.py name REQ...                      Galaxy's v2_image_name for the requirements
  on_mount.py resolve --dir DIR REQSET...      REQSET = "samtools=1.9" or "bwa=0.7.17,samtools=1.9"
  on_mount.py live --dir DIR                   one registry kept alive: resolve each REQSET read
                                               from stdin, print {"answer", "dir_mtime_ns"} per line

`resolve` builds a ContainerRegistry from a container_resolvers config the way Galaxy does,
with two cached_mulled_singularity resolvers: the first names a cache directory that does not
exist on the read-only mount (Galaxy tries to create it), the second DIR. It prints one JSON
object: the answer per REQSET, what creating the missing directory did, and what writing into DIR
did. Run with the venv's python (tests/galaxy/setup-venv.sh).
"""
import errno
import json
import logging
import os
import sys

from galaxy.tool_util.deps.containers import ContainerRegistry
from galaxy.tool_util.deps.dependencies import AppInfo, ToolInfo
from galaxy.tool_util.deps.mulled.mulled_build_tool import requirements_to_mulled_targets
from galaxy.tool_util.deps.mulled.util import v2_image_name
from galaxy.tool_util.deps.requirements import ToolRequirement


def tool_requirements(reqset):
    out = []
    for r in reqset.split(","):
        name, _, version = r.partition("=")
        out.append(ToolRequirement(name=name, type="package", version=version or None))
    return out


def registry(dirs):
    conf = [{"type": "cached_mulled_singularity", "cache_directory": d,
             "cache_directory_cacher_type": "dir_mtime"} for d in dirs]
    return ContainerRegistry(AppInfo(container_resolvers_config_dict=conf))


def resolve(reg, reqset):
    r = reg.resolve(["singularity"], ToolInfo(requirements=tool_requirements(reqset)), install=False)
    return r.container_description.identifier if r else None


def try_errno(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def main():
    logging.basicConfig(level=logging.ERROR)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "name":
        print(v2_image_name(requirements_to_mulled_targets(tool_requirements(",".join(args)))))
        return
    assert args[0] == "--dir"
    d, reqsets = args[1], args[2:]
    if cmd == "resolve":
        missing = os.path.join(os.path.dirname(d), "galaxy-cache-missing")
        out = {"mkdir_missing": try_errno(lambda: os.makedirs(missing)),
               "write_into_dir": try_errno(lambda: open(os.path.join(d, "built.sif"), "wb").close())}
        try:
            reg = registry([missing, d])
            out["registry"] = "built"
        except Exception as e:  # noqa: BLE001 - report what Galaxy does
            out["registry"] = f"{type(e).__name__}: {e}"
            reg = registry([d])
        out["resolved"] = {r: resolve(reg, r) for r in reqsets}
        print(json.dumps(out))
    elif cmd == "live":
        reg = registry([d])
        for line in sys.stdin:
            answer = resolve(reg, line.strip())
            print(json.dumps({"answer": answer, "dir_mtime_ns": os.stat(d).st_mtime_ns}), flush=True)


if __name__ == "__main__":
    main()
