"""Compare the accuracy figures of two report.json files (old code vs new code, same inputs)."""
import json, sys

old, new = (json.load(open(p)) for p in sys.argv[1:3])
def cand(r):
    q = next(p for p in r["passes"] if p["name"] == "quantize")["metrics"].get("candidates", {})
    return {k: (v.get("score", v.get("accuracy")), v["drop_points"]) for k, v in q.items()}
rows = [
    ("reference accuracy", old["reference"]["accuracy"], new["reference"]["accuracy"]),
    ("reference macro_f1", old["reference"]["macro_f1"], new["reference"]["macro_f1"]),
    ("quantize candidates (selection score, drop)", cand(old), cand(new)),
    ("chosen", old["artifact"]["quantization"] + "/" + str(old["artifact"]["graph"]),
     new["artifact"]["quantization"] + "/" + str(new["artifact"]["graph"])),
    ("build accuracy", old["build"]["accuracy"], new["build"]["accuracy"]),
    ("build macro_f1", old["build"]["macro_f1"], new["build"]["macro_f1"]),
    ("gate", [(g["name"], g["value"], g.get("ci95")) for g in old["gates"] if "drop" in g["name"]],
     [(g["name"], g["value"], g.get("ci95")) for g in new["gates"] if "drop" in g["name"]]),
    ("data sha", old["data"]["eval"]["sha256"], new["data"]["eval"]["sha256"]),
    ("model sha", old["artifact"]["files"][old["artifact"]["model_file"]]["sha256"],
     new["artifact"]["files"][new["artifact"]["model_file"]]["sha256"]),
]
for name, a, b in rows:
    print(("SAME " if a == b else "DIFF ") + name + ": " + (str(a) if a == b else f"{a}  vs  {b}"))
