"""07: a data-analysis job: upload a CSV, compute over several execs, download an SVG chart.

The daemon has no persistent interpreter contexts: each exec is a fresh Python process.
The job keeps its intermediate results in files of the sandbox, which persist between
execs. The python pack has only the standard library, so the chart is SVG written by
hand.

    python examples/07_data_analysis.py [--out DIR]
"""

import argparse
import json
import os
from pathlib import Path

from emberd import Sandbox

HERE = Path(__file__).parent
WORK = "/home/sandbox/job"

LOAD = f"""
import csv, json
rows = list(csv.DictReader(open("{WORK}/weather.csv")))
clean = [{{"city": r["city"], "month": int(r["date"][5:7]), "temp_c": float(r["temp_c"]),
          "rain_mm": float(r["rain_mm"])}} for r in rows if r["temp_c"]]
json.dump(clean, open("{WORK}/clean.json", "w"))
print(f"loaded {{len(rows)}} rows, kept {{len(clean)}}, cities: {{sorted({{r['city'] for r in clean}})}}")
"""

STATS = f"""
import json, statistics
from collections import defaultdict
rows = json.load(open("{WORK}/clean.json"))
by_city = defaultdict(list)
for r in rows:
    by_city[r["city"]].append(r)
stats = {{}}
for city, rs in sorted(by_city.items()):
    temps = [r["temp_c"] for r in rs]
    months = defaultdict(list)
    for r in rs:
        months[r["month"]].append(r["temp_c"])
    stats[city] = {{
        "days": len(rs), "mean_c": round(statistics.mean(temps), 2), "stdev_c": round(statistics.stdev(temps), 2),
        "min_c": min(temps), "max_c": max(temps), "rain_mm": round(sum(r["rain_mm"] for r in rs), 1),
        "monthly_mean_c": {{m: round(statistics.mean(v), 2) for m, v in sorted(months.items())}},
    }}
    print(f"{{city:10}} mean {{stats[city]['mean_c']:6.2f}} sd {{stats[city]['stdev_c']:5.2f}} "
          f"range {{stats[city]['min_c']:5.1f}}..{{stats[city]['max_c']:5.1f}}  rain {{stats[city]['rain_mm']:6.1f}} mm")
json.dump(stats, open("{WORK}/stats.json", "w"), indent=1)
"""

CHART = f"""
import json
stats = json.load(open("{WORK}/stats.json"))
W, H, PAD = 640, 360, 50
colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"]
months = sorted({{int(m) for s in stats.values() for m in s["monthly_mean_c"]}})
temps = [t for s in stats.values() for t in s["monthly_mean_c"].values()]
lo, hi = min(temps) - 2, max(temps) + 2
x = lambda m: PAD + (m - months[0]) * (W - 2 * PAD) / max(1, months[-1] - months[0])
y = lambda t: H - PAD - (t - lo) * (H - 2 * PAD) / (hi - lo)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{{W}}" height="{{H}}" font-family="sans-serif" font-size="12">',
       f'<rect width="{{W}}" height="{{H}}" fill="white"/>',
       f'<text x="{{W / 2}}" y="20" text-anchor="middle" font-size="15">Monthly mean temperature (°C)</text>',
       f'<line x1="{{PAD}}" y1="{{H - PAD}}" x2="{{W - PAD}}" y2="{{H - PAD}}" stroke="black"/>',
       f'<line x1="{{PAD}}" y1="{{PAD}}" x2="{{PAD}}" y2="{{H - PAD}}" stroke="black"/>']
for m in months:
    out.append(f'<text x="{{x(m):.1f}}" y="{{H - PAD + 16}}" text-anchor="middle">{{m}}</text>')
for i in range(5):
    t = lo + i * (hi - lo) / 4
    out.append(f'<text x="{{PAD - 6}}" y="{{y(t) + 4:.1f}}" text-anchor="end">{{t:.0f}}</text>')
for i, (city, s) in enumerate(sorted(stats.items())):
    pts = " ".join(f"{{x(int(m)):.1f}},{{y(t):.1f}}" for m, t in sorted(s["monthly_mean_c"].items(), key=lambda kv: int(kv[0])))
    c = colors[i % len(colors)]
    out.append(f'<polyline fill="none" stroke="{{c}}" stroke-width="2" points="{{pts}}"/>')
    out.append(f'<text x="{{W - PAD + 4}}" y="{{PAD + 16 * i}}" fill="{{c}}">{{city}}</text>')
out.append("</svg>")
open("{WORK}/chart.svg", "w").write("\\n".join(out))
print(f"chart: {{len(stats)}} series over months {{months[0]}}-{{months[-1]}}")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out-07", help="where to put chart.svg and stats.json")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)

    with Sandbox.create() as sb:
        with open(HERE / "data" / "weather.csv", "rb") as f:
            w = sb.files.upload(f"{WORK}/weather.csv", f)
        print(f"uploaded {w.bytes} bytes to {w.path}")

        for step, code in (("load", LOAD), ("stats", STATS), ("chart", CHART)):
            r = sb.exec(code, timeout_ms=120_000)
            if not r.ok:
                raise SystemExit(f"step {step} failed ({r.exit_code}, {r.error}):\n{r.stderr}")
            print(f"[{step}]\n{r.stdout}", end="")

        for name in ("chart.svg", "stats.json"):
            with open(out / name, "wb") as f:
                n = sb.files.download(f"{WORK}/{name}", f)
            print(f"downloaded {name}: {n} bytes -> {os.path.join(out, name)}")


if __name__ == "__main__":
    main()
