#!/usr/bin/env python3
"""Check that `depotfs resolve` picks the same image as Galaxy's own resolver.

Galaxy side: the real `cached_mulled_singularity` resolver of galaxy-tool-util, built through
Galaxy's `ContainerRegistry` from a `container_resolvers` config (`cache_directory: DIR`,
`cache_directory_cacher_type: dir_mtime`), asked with `ToolInfo`/`ToolRequirement`, as Galaxy
asks it for a tool. depotfs side: `depotfs resolve --batch` (one process for all cases) plus the
documented CLI (`depotfs resolve --json ...`, one process per case) for a sample.

Three tiers, all over the same directory:

- registry: N requirement sets drawn deterministically (seeded) from the directory's names,
  noise included, each resolved by `ContainerRegistry.resolve` (~5 ms each in Python).
- exhaustive: every image name without version, every (name, version) pair of the directory,
  upper-cased names, and every multi-package set; Galaxy's answer comes from the resolver's own
  `dir_mtime` listing and Galaxy's `find_best_matching_cached_image`, given only the entries of the
  wanted image name (which cannot change its answer; checked against the registry tier).
- cli: the first K registry cases through the documented CLI, exit status included.

DIR can be any directory, e.g. a depotfs mount. `--populate LISTING.tsv.gz` first creates DIR
with one empty file per name of the listing (`bin` as a directory, as in the real one) plus
synthetic entries: mulled-v2 names of some of the generated multi-package sets (hits; names
are hashes, so real mulled entries cannot be targeted) and some noise the real listing lacks
(upper-case image names, empty tags, mulled-v1).

Usage:
  agreement.py --dir DIR [--populate LISTING.tsv.gz] --depotfs BIN [--cases 5000]
               [--seed 1] [--cli-cases 40] [--fuzz N] [--report report.json]
  agreement.py --dir DIR --populate LISTING.tsv.gz --populate-only   # e.g. to publish DIR
Exit status 0 when every answer agrees, 1 otherwise. Run with the venv's python
(tests/galaxy/setup-venv.sh).
"""

import argparse
import collections
import gzip
import hashlib
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time

from galaxy.tool_util.deps.container_resolvers.mulled import (
    CachedMulledImageSingleTarget,
    CachedV2MulledImageMultiTarget,
    find_best_matching_cached_image,
)
from galaxy.tool_util.deps.containers import ContainerRegistry
from galaxy.tool_util.deps.dependencies import AppInfo, ToolInfo
from galaxy.tool_util.deps.mulled.mulled_build_tool import requirements_to_mulled_targets
from galaxy.tool_util.deps.mulled.util import v2_image_name
from galaxy.tool_util.deps.requirements import ToolRequirement

MULTI_SETS = 1500


def tool_requirements(reqs):
    """CLI strings `name[=version]` -> Galaxy ToolRequirements (split at the first `=`)."""
    out = []
    for r in reqs:
        name, sep, version = r.partition("=")
        out.append(ToolRequirement(name=name, type="package", version=version if sep else None))
    return out


def image_of(entry):
    return entry.rsplit(":", 1)[0]


def tag_version(entry):
    """The version Galaxy reads from `name:version--build` (None for no tag)."""
    if ":" not in entry:
        return None
    tag = entry.rsplit(":", 1)[1]
    return tag.rsplit("--", 1)[0] if "--" in tag else tag


def is_mulled(entry):
    return entry.startswith("mulled-v")


def multi_sets(single_pool, seed):
    """Deterministic multi-package requirement sets and the entries to plant for some of them."""
    rng = random.Random(seed * 7919 + 1)
    sets, plants = [], []
    for i in range(MULTI_SETS):
        k = rng.choice([2, 2, 2, 3, 3, 4])
        reqs = []
        versionless = rng.random() < 0.1
        for _ in range(k):
            e = rng.choice(single_pool)
            name, v = image_of(e), tag_version(e)
            if rng.random() < 0.05:
                name = name.upper()
            if versionless or v is None or rng.random() < 0.15:
                reqs.append(name)
            else:
                reqs.append(f"{name}={v}")
        if rng.random() < 0.03:
            reqs.append(reqs[0])  # a duplicated requirement
        sets.append(reqs)
        name = v2_image_name(requirements_to_mulled_targets(tool_requirements(reqs)))
        if i % 3 == 1:
            continue  # a miss
        if ":" in name:
            builds = ["0"] if i % 3 == 0 else rng.sample(["0", "1", "2", "0__old", "10"], rng.randint(2, 4))
            plants.extend(f"{name}-{b}" for b in builds)
            if rng.random() < 0.2:
                plants.append(f"{name.split(':')[0]}:0")  # version-less build of the same packages
        else:
            plants.append(f"{name}:{rng.choice(['0', '1', 'deprecate', 'latest'])}")
            if rng.random() < 0.5:
                plants.append(f"{name}:{'%040x' % rng.getrandbits(160)}-0")
    return sets, plants


SYNTHETIC_NOISE = [
    "Samtools:1.9--0",
    "FastQC:0.11.9--0",
    "MixedCase:1.0--h0_0",
    "mixedcase:1.0--h0_1",
    "emptytag:",
    "emptytag:--1",
    "emptytag:1.0",
    "mulled-v1-0123456789abcdef0123456789abcdef01234567:0",
    "twobuilds:1.0--a--b",
    "twobuilds:1.0--c",
    "equalkeys:1.0--0",
    "equalkeys:1.0.0--0",
    "equalkeys:v1.0--0",
]


def populate(listing, d, seed):
    os.makedirs(d, exist_ok=True)
    if os.listdir(d):
        sys.exit(f"--populate: {d} is not empty")
    with gzip.open(listing, "rt") as f:
        names = [line.split("\t", 1)[0] for line in f.read().splitlines()[1:]]
    _, plants = multi_sets(sorted(n for n in names if not is_mulled(n)), seed)
    for n in names + plants + SYNTHETIC_NOISE:
        p = os.path.join(d, n)
        if n == "bin":
            os.mkdir(p)
        elif not os.path.lexists(p):
            open(p, "w").close()
    return len(names), len(set(plants)), len(SYNTHETIC_NOISE)


def real_mulled_cases(names, top_pairs=400, top_triples=120):
    """Requirement sets whose mulled-v2 image really is in the directory.

    Names are hashes and cannot be inverted, so try every pair (triple) of the most common
    package names, keep those whose name hash is an entry, then every combination of their
    listed versions whose version hash is one.
    """
    groups = collections.defaultdict(list)
    for e in names:
        groups[image_of(e)].append(e)
    single = {k: v for k, v in groups.items() if not is_mulled(k)}
    versions = {k: sorted({tag_version(e) for e in v if tag_version(e)}) for k, v in single.items()}
    by_count = sorted(single, key=lambda k: (-len(single[k]), k))

    def sha(parts):
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    cases = []
    combos = itertools.chain(
        itertools.combinations(sorted(by_count[:top_pairs]), 2),
        itertools.combinations(sorted(by_count[:top_triples]), 3),
    )
    for pkgs in combos:
        image = f"mulled-v2-{sha(pkgs)}"
        if image not in groups:
            continue
        cases.append(list(pkgs))
        hashes = {e.rsplit(":", 1)[1].rsplit("-", 1)[0] for e in groups[image] if "-" in e.rsplit(":", 1)[1]}
        vlists = [versions[p] for p in pkgs]
        if 0 < len(hashes) and all(vlists) and len(list(itertools.product(*vlists))) <= 200_000:
            for vs in itertools.product(*vlists):
                if sha(vs) in hashes:
                    cases.append([f"{p}={v}" for p, v in zip(pkgs, vs)])
    return cases


def registry_cases(names, n, seed):
    """n requirement sets from the directory's names; fixed noise cases first."""
    rng = random.Random(seed)
    singles = [e for e in names if not is_mulled(e)]
    mulled = [e for e in names if is_mulled(e)]
    fixed = [
        ["bin"], ["archive-old-builds.py"], ["apptainer"], ["apptainer=latest"], ["hicexplorer"],
        ["beagle=4.0_06Jun17"], ["beagle=4.0_06jun17"], ["BEAGLE=4.0_06Jun17"], ["beagle"],
        ["samtools"], ["samtools=1.9"], ["SamTools=1.9"], ["samtools=1.9--h91753b0_8"],
        ["samtools=1.9=h91753b0_8"], ["samtools=1.9=h91753b0_8=x"], ["samtools=1.9--a--b"],
        ["samtools="], ["sam tools"], ["samtools=1 .9"], ["=1.0"], [""], ["a,b=1"], ["samtools,bwa"],
        ["Samtools=1.9"], ["fastqc"], ["mixedcase"], ["MixedCase=1.0"], ["emptytag"], ["emptytag="],
        ["twobuilds=1.0"], ["twobuilds=1.0--a"], ["equalkeys"], ["mulled-v1-0123456789abcdef0123456789abcdef01234567"],
        ["snakemake-minimal_7.25.0--pyhdfd78af_0-test"], ["samtools", "samtools"], ["samtools=1.9", "bwa"],
        ["samtools=1.9", "bwa=0.7.17"], ["bwa=0.7.17", "SAMTOOLS=1.9"], ["samtools", "bwa"],
    ]
    fixed += real_mulled_cases(names)[:300]
    sets, _ = multi_sets(sorted(singles), seed)
    cases = [c for c in fixed]
    while len(cases) < n:
        r = rng.random()
        e = rng.choice(singles)
        name, v = image_of(e), tag_version(e)
        if r < 0.15:
            cases.append([name])
        elif r < 0.50:
            cases.append([f"{name}={v}"] if v is not None else [name])
        elif r < 0.55:
            tag = e.rsplit(":", 1)[-1] if ":" in e else ""
            cases.append([f"{name}={tag}"] if tag else [name])
        elif r < 0.58:
            cases.append([f"{name}={tag.replace('--', '=')}" for tag in [e.rsplit(':', 1)[-1]]])
        elif r < 0.63:
            cases.append([f"{name.upper()}={v}" if v else name.upper()])
        elif r < 0.68:
            cases.append([f"{name}={v}.999" if v else f"{name}=0.0.0.999"])
        elif r < 0.70:
            cases.append([f"nosuchpackage-{rng.randrange(10**6)}"])
        elif r < 0.73:
            m = rng.choice(mulled)
            cases.append([image_of(m)] if rng.random() < 0.5 else [m.replace(":", "=", 1)])
        else:
            cases.append(list(rng.choice(sets)))
    return cases[:n]


FUZZ_TOKENS = (
    ["0", "1", "2", "9", "00", "01", "10", "2019", "12345678901234567890", "\u0663", "\u00b2"]
    + ["a", "b", "c", "rc", "pre", "preview", "alpha", "beta", "post", "rev", "r", "dev", "v", "V"]
    + ["RC", "Post", "DEV", "final", "latest", "x", "h1a2b3c", "py", "local", "ubuntu"]
    + [".", ".", ".", "-", "-", "_", "+", "!", "--", " ", "\t", "*", "@", "~", "\u212a", "\u00e9"]
)


def pep440ish(rng, base):
    """A version near PEP 440: shared base release, random pre/post/dev/local parts and spellings."""
    sep = lambda: rng.choice(["", "", ".", "-", "_"])  # noqa: E731
    num = lambda: rng.choice(["", "0", "1", "2", "01", "10"])  # noqa: E731
    s = rng.choice(["", "", "", "v", "V", " "]) + rng.choice(["", "", "", "1!", "0!"]) + base
    s += rng.choice(["", "", ".0", ".0.0", ".1", ".00"])
    if rng.random() < 0.4:
        s += sep() + rng.choice(["a", "b", "c", "rc", "pre", "preview", "alpha", "beta", "A", "RC"]) + sep() + num()
    if rng.random() < 0.3:
        s += rng.choice(["-1", "-0", "-2"]) if rng.random() < 0.3 else sep() + rng.choice(["post", "rev", "r", "POST"]) + sep() + num()
    if rng.random() < 0.3:
        s += sep() + rng.choice(["dev", "DEV"]) + sep() + num()
    if rng.random() < 0.2:
        s += "+" + ".".join(rng.choice(["1", "01", "abc", "ubuntu", "2", "x1", "A"]) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.05:
        s += rng.choice([".", "-", "+", "!", "x", "..1", "__"])  # usually breaks it: LegacyVersion
    return s


def fuzz_tag(rng, base):
    def piece(lo, hi):
        return "".join(rng.choice(FUZZ_TOKENS) for _ in range(rng.randint(lo, hi)))

    version = pep440ish(rng, base) if rng.random() < 0.6 else piece(0, 6)
    r = rng.random()
    if r < 0.5:
        return f"{version}--{rng.choice(['0', '1', '10', 'h1_0', 'py_1']) if rng.random() < 0.5 else piece(1, 3)}"
    if r < 0.7:
        return f"{version}-{piece(1, 2)}"
    return version


def fuzz_populate(d, n, seed):
    """n image names with 2-4 entries each whose tags are random version-like strings."""
    rng = random.Random(seed * 104729 + 7)
    os.makedirs(d)
    cases = []
    for i in range(n):
        base = rng.choice(["1", "1.0", "0", "2.1", "1.2.3", "10"])
        tags = {fuzz_tag(rng, base) for _ in range(rng.randint(2, 5))}
        tags = [t for t in tags if "/" not in t and ":" not in t]
        for t in tags:
            open(os.path.join(d, f"fz{i}:{t}"), "w").close()
        cases.append([f"fz{i}"])
        for t in tags:
            v = t.rsplit("--", 1)[0] if "--" in t else t
            if v and v != "latest" and "=" not in v:
                cases.append([f"fz{i}={v}"])
    return cases


def exhaustive_cases(names, seed):
    images = sorted({image_of(e) for e in names})
    pairs = sorted({(image_of(e), tag_version(e)) for e in names if not is_mulled(e) and tag_version(e) is not None})
    singles = sorted(e for e in names if not is_mulled(e))
    sets, _ = multi_sets(singles, seed)
    cases = [[i] for i in images]
    cases += [[f"{i}={v}"] for i, v in pairs]
    cases += [[i.upper()] for i in images if not is_mulled(i)][::7]
    cases += sets
    cases += real_mulled_cases(names)
    return cases


class Galaxy:
    """Galaxy's resolver for DIR, built the way Galaxy builds it from its config."""

    def __init__(self, d):
        self.dir = d
        conf = [{"type": "cached_mulled_singularity", "cache_directory": d, "cache_directory_cacher_type": "dir_mtime"}]
        self.registry = ContainerRegistry(AppInfo(container_resolvers_config_dict=conf))
        (self.resolver,) = self.registry.container_resolvers
        self._index = None

    def resolve(self, reqs):
        """(path or None, error or None) from ContainerRegistry.resolve."""
        try:
            r = self.registry.resolve(["singularity"], ToolInfo(requirements=tool_requirements(reqs)), install=False)
        except Exception as e:  # Galaxy logs these and resolves nothing
            return None, f"{type(e).__name__}: {e}"
        return (r.container_description.identifier if r else None), None

    def index(self):
        if self._index is None:
            idx = {}
            for c in self.resolver.cache_directory.list_cached_mulled_images_from_path():
                if isinstance(c, CachedMulledImageSingleTarget):
                    key = c.package_name
                elif isinstance(c, CachedV2MulledImageMultiTarget):
                    key = c.package_hash
                else:
                    continue
                idx.setdefault(key, []).append(c)
            self._index = idx
        return self._index

    def resolve_indexed(self, reqs):
        """Same answer as resolve(), from Galaxy's listing restricted to the wanted image name."""
        try:
            targets = requirements_to_mulled_targets(tool_requirements(reqs))
        except Exception as e:
            return None, f"{type(e).__name__}: {e}"
        if not targets:
            return None, None
        key = targets[0].package if len(targets) == 1 else v2_image_name(targets).split(":")[0]
        image = find_best_matching_cached_image(targets, self.index().get(key, []), "v2")
        if image is None:
            return None, None
        return os.path.abspath(os.path.join(self.dir, image.image_identifier)), None


def depotfs_batch(binary, d, cases):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for c in cases:
            f.write(json.dumps(c) + "\n")
    try:
        out = subprocess.run(
            [binary, "resolve", "--dir", d, "--batch", f.name], check=True, capture_output=True, text=True
        ).stdout.splitlines()
    finally:
        os.unlink(f.name)
    if len(out) != len(cases):
        sys.exit(f"depotfs --batch answered {len(out)} lines for {len(cases)} cases")
    return [(o.get("path"), o.get("error")) for o in map(json.loads, out)]


def compare(tier, cases, galaxy, depotfs, mismatches):
    s = {"cases": len(cases), "agree": 0, "hits": 0, "misses": 0, "errors": 0}
    for c, (gp, ge), (dp, de) in zip(cases, galaxy, depotfs):
        if gp == dp and (ge is None) == (de is None):
            s["agree"] += 1
            s["errors" if ge else "hits" if gp else "misses"] += 1
        else:
            mismatches.append({"tier": tier, "requirements": c, "galaxy": gp or ge, "depotfs": dp or de})
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--populate", metavar="LISTING.tsv.gz")
    ap.add_argument("--populate-only", action="store_true", help="with --populate: create DIR and stop")
    ap.add_argument("--depotfs")
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--cli-cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fuzz", type=int, default=0, metavar="N", help="also check N image names with random tags (in a temporary directory)")
    ap.add_argument("--report")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    report = {"dir": a.dir, "seed": a.seed}
    t0 = time.time()
    if a.populate:
        real, planted, noise = populate(a.populate, a.dir, a.seed)
        report["populated"] = {"listing": real, "planted_mulled": planted, "synthetic_noise": noise}
        if a.populate_only:
            print(json.dumps(report))
            return 0
    if not a.depotfs:
        ap.error("--depotfs is required unless --populate-only")
    names = sorted(os.listdir(a.dir))
    report["entries"] = len(names)
    galaxy = Galaxy(a.dir)
    mismatches = []

    t = time.time()
    cases = registry_cases(names, a.cases, a.seed)
    g = [galaxy.resolve(c) for c in cases]
    report["galaxy_registry_seconds"] = round(time.time() - t, 1)
    report["registry"] = compare("registry", cases, g, depotfs_batch(a.depotfs, a.dir, cases), mismatches)
    # The index shortcut must give the registry's answers, or the exhaustive tier proves nothing.
    gi = [galaxy.resolve_indexed(c) for c in cases]
    report["index_self_check"] = compare("index-vs-registry", cases, g, gi, mismatches)

    t = time.time()
    ecases = exhaustive_cases(names, a.seed)
    eg = [galaxy.resolve_indexed(c) for c in ecases]
    report["galaxy_exhaustive_seconds"] = round(time.time() - t, 1)
    report["exhaustive"] = compare("exhaustive", ecases, eg, depotfs_batch(a.depotfs, a.dir, ecases), mismatches)

    if a.fuzz:
        with tempfile.TemporaryDirectory() as tmp:
            fdir = os.path.join(tmp, "fuzz")
            fcases = fuzz_populate(fdir, a.fuzz, a.seed)
            fg = Galaxy(fdir)
            want = [fg.resolve_indexed(c) for c in fcases]
            sample = fcases[:: max(1, len(fcases) // 300)]
            report["fuzz_index_self_check"] = compare(
                "fuzz-index-vs-registry", sample, [fg.resolve(c) for c in sample], [fg.resolve_indexed(c) for c in sample], mismatches
            )
            report["fuzz"] = compare("fuzz", fcases, want, depotfs_batch(a.depotfs, fdir, fcases), mismatches)

    cli = {"cases": 0, "agree": 0}
    for c, (gp, ge) in list(zip(cases, g))[: a.cli_cases]:
        p = subprocess.run([a.depotfs, "resolve", "--dir", a.dir, "--json", *c], capture_output=True, text=True)
        want_rc = 2 if ge else 0 if gp else 1
        got = json.loads(p.stdout).get("path") if p.stdout.strip() else None
        cli["cases"] += 1
        if p.returncode == want_rc and got == gp:
            cli["agree"] += 1
        else:
            mismatches.append({"tier": "cli", "requirements": c, "galaxy": gp or ge, "depotfs": [p.returncode, got, p.stderr.strip()]})
    report["cli"] = cli
    report["mismatches"] = mismatches[:50]
    report["mismatch_count"] = len(mismatches)
    report["seconds"] = round(time.time() - t0, 1)
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
    summary = {k: v for k, v in report.items() if k != "mismatches"}
    print(json.dumps(summary, indent=1))
    for m in mismatches[:20]:
        print("MISMATCH", json.dumps(m), file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
