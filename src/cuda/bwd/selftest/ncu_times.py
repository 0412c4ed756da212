# Summarises `ncu --csv --metrics gpu__time_duration.sum` output: kernel (short name) -> durations in us.
import csv, re, sys
from collections import defaultdict
rows = [r for r in csv.reader(line for line in sys.stdin if line.startswith('"'))]
head, body = rows[0], rows[1:]
name_i, unit_i, val_i = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
times = defaultdict(list)
for r in body:
    name = re.sub(r"\(.*", "", r[name_i]).split("::")[-1]
    tmpl = re.search(r"<(.*)>", r[name_i])
    key = name + ("<" + tmpl.group(1)[:40] + ">" if tmpl else "")
    scale = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "nsecond": 1e-3, "ms": 1e3, "msecond": 1e3}.get(r[unit_i], 1.0)
    times[key].append(float(r[val_i].replace(",", "")) * scale)
total = 0.0
for k, v in times.items():
    per_run = sum(v) / 2  # the bench runs the backward twice (warm-up + 1)
    total += per_run
    print(f"{per_run:10.1f} us  {len(v)//2:3d}x  {k}")
print(f"{total:10.1f} us  total per backward")
