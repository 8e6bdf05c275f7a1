"""One-off: the runs of seeds 0 and 1 of the stopped full run, read from its printed lines, as a part for --merge.
Settings, rates, machine, parameters copied from the seed-2 part (same data, same models)."""
import json, re, sys
log, part2, out = sys.argv[1:4]  # seeds01_printed.log funnel_s2.json funnel_s01.json
p2 = json.loads(open(part2).read())
params = {(r["library"], r["family"]): r["parameters"] for r in p2["runs"]}
cvr = {(r["library"], r["family"]): r["cvr_score"] for r in p2["runs"]}
pat = re.compile(r"^seed (\d+) (\S+)\s+(\S+)\s+(.+?)\s+works ([\d.]+) ctcvr ([\d.]+) cvr ([\d.]+)\s+([\d.]+) s/epoch x (\d+)$")
runs = []
for line in open(log):
    m = pat.match(line.rstrip("\n"))
    if not m:
        continue
    seed, lib, fam, bal, w, c, v, s, e = m.groups()
    if int(seed) not in (0, 1):
        continue
    runs.append({"library": lib, "family": fam, "balancer": bal.strip(), "seed": int(seed),
                 "test": {"works": {"auc": float(w)}, "ctcvr": {"auc": float(c)}, "cvr": {"auc": float(v)}},
                 "cvr_score": cvr[(lib, fam)], "ratio_over_1": None, "s_per_epoch": float(s), "epochs": int(e),
                 "parameters": params[(lib, fam)], "from_log": True})
res = {**p2, "command": ["benchmarks/funnel.py", "--epochs", "4", "--seeds", "0", "1", "2", "--threads", "1",
                         "--out", "docs/benchmarks", "(stopped after seed 1; seeds 0 and 1 read from its printed lines)"],
       "runs": runs, "failures": [],
       "notes": [n for n in p2["notes"] if not n.startswith("Total wall time")],
       "settings": {**p2["settings"], "seeds": [0, 1]}}
open(out, "w").write(json.dumps(res, indent=2))
print(len(runs), "runs")
