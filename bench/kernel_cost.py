"""2. Kernel cost per exec: run time of each probe program per exec, from the kernel's
own BPF statistics (sysctl kernel.bpf_stats_enabled), for non-catalog execs (the common
case: the filter drops them; in btf mode after one lookup of the image's content
verdict, as the sensor runs it), execs of an interpreter's name (judged for a script
argument, then dropped) and catalog execs (forwarded to user space), in each probe mode
(btf, tracepoint).

Run as root after set-up. Prints figures and writes bench/results/kernel_cost.json.
"""

from __future__ import annotations

import argparse
import sys

from common import BPF_STATS, WORK, save, spawn, static_binary

from osquery_netutil.catalog import Catalog
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.kernel.records import F_UNJUDGED, ExecRecord
from testkit.support import tiny_elf, write_executable


def measure(probe: Probe, binary: str, count: int) -> dict[str, dict[str, float]]:
    before = probe.program_stats()
    spawn(binary, count)
    probe.drain()
    after = probe.program_stats()
    programs = {}
    for name, (runs, ns) in after.items():
        r, t = runs - before[name][0], ns - before[name][1]
        short = name.removeprefix("tracepoint__").removeprefix("raw_tracepoint__").removeprefix("kfunc__").replace("__", ":")
        programs[short] = {"runs": r, "ns_per_run": t / max(r, 1), "ns_per_exec": t / count}
    return programs


def judge(probe: Probe, rec: ExecRecord) -> None:
    """The sensor's part in the content verdicts: every image judged no utility."""
    if rec.flags & F_UNJUDGED:
        probe.remember_verdict(rec, False)


def report(mode: str, rounds: dict[str, list[dict[str, dict[str, float]]]], execs: int) -> dict[str, object]:
    """Medians per kind of exec and program, printed and returned."""
    result: dict[str, object] = {}
    print(f"{mode} mode: kernel time of the probe's programs per exec ({execs} fork+exec per round, median of {len(rounds['catalog'])} rounds):")
    for kind, measured in rounds.items():
        programs = {}
        for name in measured[0]:
            values = sorted(m[name]["ns_per_exec"] for m in measured)
            programs[name] = {"ns_per_exec": values[len(values) // 2], "ns_per_run": measured[0][name]["ns_per_run"],
                              "runs_per_exec": measured[0][name]["runs"] / execs}
        totals = sorted(sum(m[n]["ns_per_exec"] for n in m) for m in measured)
        result[kind] = {"programs": programs, "total_ns": totals[len(totals) // 2], "min_ns": totals[0], "max_ns": totals[-1]}
        print(f"  {kind.replace('_', '-')} execs: {totals[len(totals) // 2]:.0f} ns per exec in all ({totals[0]:.0f}-{totals[-1]:.0f})")
        for name, p in programs.items():
            if p["runs_per_exec"]:
                print(f"    {name:36s} {p['ns_per_exec']:6.0f} ns/exec  ({p['runs_per_exec']:.2f} runs of {p['ns_per_run']:.0f} ns)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # An interpreter's name (sh) has its first argument judged as a script's place: the
    # cost every `sh -c` and `python3 x.py` on the host pays on top of a non-catalog exec.
    kinds = {"non_catalog": static_binary("bench-true"), "interpreter": static_binary("sh"),
             "catalog": str(write_executable(WORK / "nc", tiny_elf()))}
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    result: dict[str, object] = {"execs": args.execs, "rounds": args.rounds}
    try:
        # btf mode as the sensor runs it: content verdicts on, each image judged once (here:
        # no utility), so the rounds measure the steady state's lookup; then without them
        # (a bare probe), for what the verdicts cost. The modes take turns round by round,
        # each first in one round, so that a machine that slows down meanwhile (or a
        # probe's start after another's stop) weighs on all of them alike.
        modes = ("btf", "btf_without_verdicts", "tracepoint")
        rounds: dict[str, dict[str, list[dict[str, dict[str, float]]]]] = {mode: {k: [] for k in kinds} for mode in modes}
        for r in range(args.rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:   # each mode first once
                probe = Probe(Catalog.load().basenames(), lambda rec: judge(probe, rec), mode=mode.split("_")[0],
                              content_verdicts=mode == "btf")
                probe.start()
                try:
                    spawn(kinds["non_catalog"], 100)   # the images' first execs: judged before measuring
                    spawn(kinds["interpreter"], 100)
                    for kind, binary in kinds.items():
                        rounds[mode][kind].append(measure(probe, binary, args.execs))
                finally:
                    probe.stop()
        for mode in modes:
            result[mode] = report(mode, rounds[mode], args.execs)
    finally:
        BPF_STATS.write_text(previous)
    print(f"  written to {save('kernel_cost', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
