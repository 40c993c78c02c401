#!/usr/bin/env python3
"""Checks of the report writer: how targets are judged, and that the Notes section survives.

python3 -m unittest discover -s benches -p 'test_*.py'
"""
import json
import os
import tempfile
import unittest

import report


def m(unit, values):
    return {"label": "x", "unit": unit, "values": values, "better": "higher"}


def results(meas, mode="full"):
    return {"date": "2026-11-22 06:00 UTC", "mode": mode, "command": "benches/run", "commit": "abc",
            "dirty": False, "depotfs_bin": "depotfs", "duration_s": 60, "load_end": "0",
            "machine": {"cpu": "cpu", "cores": 2, "ram": "1 GiB", "kernel": "6", "disk": "ext4",
                        "load_start": "0"},
            "info": {}, "commands": [], "criterion": [], "scripts": {"s": {"measurements": meas}}}


def read(path):
    with open(path) as f:
        return f.read()


def target(p, dk):
    return next(t for t in report.TARGETS if t[0] == p and t[2] == dk)


class Judge(unittest.TestCase):
    def test_ratio_of_medians_at_least(self):
        meas = {"p1.depotfs_mbps": m("MB/s", [800, 900, 100]), "p1.casync_mbps": m("MB/s", [100, 90, 110])}
        value, met, text = report.judge(meas, target("P1", "p1.depotfs_mbps"))
        self.assertAlmostEqual(value, 8.0)
        self.assertTrue(met)
        self.assertEqual(text, "8.00x")
        meas["p1.depotfs_mbps"]["values"] = [790, 790, 790]
        self.assertFalse(report.judge(meas, target("P1", "p1.depotfs_mbps"))[1])

    def test_at_most_ratio_and_absolute(self):
        meas = {"ls.l.depotfs_warm": m("s", [3.0]), "ls.l.ext4_warm": m("s", [1.0]),
                "rss.hwm_mb": m("MB", [150.0])}
        value, met, _ = report.judge(meas, target("P3", "ls.l.depotfs_warm"))
        self.assertEqual((value, met), (3.0, False))
        value, met, text = report.judge(meas, target("P9", "rss.hwm_mb"))
        self.assertEqual((value, met, text), (150.0, True, "150 MB"))

    def test_p1_three_ways(self):
        # On the disk, the disk's ceiling, on tmpfs: each judged against casync in the same place.
        meas = {"p1.depotfs_mbps": m("MB/s", [300]), "p1.casync_mbps": m("MB/s", [100]),
                "p1.disk_ceiling_mbps": m("MB/s", [500]),
                "p1.tmpfs.depotfs_mbps": m("MB/s", [990]), "p1.tmpfs.casync_mbps": m("MB/s", [120]),
                "p1.tmpfs.depotfs_cpu_bound_mbps": m("MB/s", [1400, 1300, 1500]),
                "p1.tmpfs.casync_cpu_bound_mbps": m("MB/s", [150, 160, 140])}
        rows = [t for t in report.TARGETS if t[0] == "P1"]
        self.assertEqual([report.judge(meas, t)[2] for t in rows], ["3.00x", "8.25x"])
        self.assertEqual([report.judge(meas, t)[1] for t in rows], [False, True])
        bounds = [b for b in report.BOUNDS if b[0] == "P1"]
        self.assertEqual([report.judge(meas, b)[2] for b in bounds], ["5.00x", "9.33x"])
        self.assertEqual([report.judge(meas, b)[1] for b in bounds], [False, True])

    def test_missing_peer_is_not_judged(self):
        meas = {"read.depotfs_cold": m("MiB/s", [500])}
        self.assertIsNone(report.judge(meas, target("P4", "read.depotfs_cold")))
        self.assertIsNotNone(report.judge(meas, next(t for t in report.TARGETS if t[0] == "P4" and t[3] is None)))


class Write(unittest.TestCase):
    def test_notes_kept_and_verdicts_written(self):
        with tempfile.TemporaryDirectory() as d:
            out, ratios = os.path.join(d, "RESULTS.md"), os.path.join(d, "ratios.json")
            with open(out, "w") as f:
                f.write("# old\n\n| stale | table |\n\n## Notes\n\nP5 is slow because of X.\n")
            meas = {"read.depotfs_hot": m("MiB/s", [900]), "read.plain_hot": m("MiB/s", [1000])}
            report.write(results(meas), out, ratios)
            text = read(out)
            self.assertIn("## Notes\n\nP5 is slow because of X.\n", text)
            self.assertNotIn("stale", text)
            self.assertIn("| P6 | hot read vs a plain local file (hot) | 900 MiB/s | 1000 MiB/s | 0.9x | ≥ 0.9x "
                          "| **met** |", text)
            bars = json.loads(read(ratios))["bars"]
            self.assertEqual(len(bars), 1)
            self.assertAlmostEqual(bars[0]["attainment"], 1.0)
            # The stage table of a measured read.
            res = results(meas)
            res["scripts"]["s"]["stage_runs"] = [{
                "kind": "cold", "wall_s": 2.0, "conditions": "load 1.0",
                "stages": {"http": [10, 3.0, 2**30], "hash": [10, 0.5, 2**30], "cache_load": [0, 0, 0]},
                "cpu_s": {"depotfs": 1.5, "nginx": 0.5, "reader": 0.2}}]
            report.write(res, out, ratios)
            text = read(out)
            self.assertIn("#### cold read 1: 2.00 s wall (load 1.0)", text)
            self.assertRegex(text, r"\| hash: [^|]+ \| 10 \| 0.500 s \| 0.25 \| 1024.0 MiB \| 2048 \|")
            self.assertNotIn("cache_load:", text)
            self.assertIn("all 2.20 of 4.00 available on 2 cores (55 %)", text)
            # P1: a ceiling row says whether the bound reaches the target and is not charted;
            # the facts that explain P1 are printed under its section, not among the others.
            meas1 = {"p1.depotfs_mbps": m("MB/s", [300]), "p1.casync_mbps": m("MB/s", [100]),
                     "p1.disk_ceiling_mbps": m("MB/s", [500]), "read.depotfs_hot": m("MiB/s", [900]),
                     "read.plain_hot": m("MiB/s", [1000])}
            res = results(meas1)
            res["info"] = {"p1_disk_ceiling": "the disk wrote 400 MB/s", "conditions_read": "load 1"}
            report.write(res, out, ratios)
            text = read(out)
            self.assertRegex(text, r"\| P1 \| the most this disk's write rate [^|]+ \| 5.00x \| ≥ 8x \| "
                                   r"\*\*out of reach here\*\* \|")
            self.assertIn("| 3.00x | ≥ 8x | **missed** |", text)
            p1 = text[text.index("## P1: publish throughput"):text.index("## P2:")]
            self.assertIn("- p1_disk_ceiling: the disk wrote 400 MB/s", p1)
            facts = text[text.index("Facts of this run:"):]
            self.assertIn("- conditions_read: load 1", facts)
            self.assertNotIn("p1_disk_ceiling", facts)
            labels = [b["label"] for b in json.loads(read(ratios))["bars"]]
            self.assertEqual(len(labels), 2)
            self.assertFalse(any("ceiling" in x for x in labels))
            report.write(results(meas, mode="quick"), out, ratios)
            text = read(out)
            self.assertIn("**met** (quick run: small sizes)", text)
            self.assertEqual(text.count("## Notes"), 1)

    def test_bounds_say_which_targets_are_out_of_reach(self):
        with tempfile.TemporaryDirectory() as d:
            out, ratios = os.path.join(d, "RESULTS.md"), os.path.join(d, "ratios.json")
            meas = {"ct.depotfs_warm_s": m("s", [0.25, 0.26, 0.24]), "ct.local_s": m("s", [0.2, 0.2, 0.2]),
                    "read.depotfs_cold_ceiling_s": m("s", [2.0]), "read.plain_cold_s": m("s", [1.6]),
                    "par.ceiling_x": m("x", [1.2, 1.3])}
            report.write(results(meas), out, ratios)
            text = read(out)
            self.assertIn("### What this machine allows", text)
            # P7's floor, 1.25x the local start, misses <= 1.1x: the target is out of reach.
            self.assertRegex(text, r"\| P7 \| container start without an access list on depotfs, warm [^|]+ "
                                   r"\| 1.25x \| ≤ 1.1x \| "
                                   r"\*\*out of reach here\*\* \|")
            # P4's ceiling, 1.25x ext4's time, is within <= 1.5x.
            self.assertRegex(text, r"\| P4 \| [^|]+ \| 1.25x \| ≤ 1.5x \| reachable by this bound \|")
            # A peerless ratio is its own median.
            self.assertRegex(text, r"\| P10 \| [^|]+ \| 1.25x \| ≥ 1.5x \| \*\*out of reach here\*\* \|")
            self.assertNotIn("| P3 | fresh", text)  # not measured: no row
            # Bounds are not targets: the chart holds none of them.
            self.assertEqual(json.loads(read(ratios))["bars"], [])


if __name__ == "__main__":
    unittest.main()
