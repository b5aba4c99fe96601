"""Runs facestream and the tools users would pick instead of it on the same inputs, one after the
other in this one run, prints a table per comparison and a final `facestream / peer` ratio table,
and writes everything to benches/peers/results.json.

  1. facestream itself: `facestream bench --mode throughput --cameras 1 --loops 1` on each clip
     (frames/s, faces/s) and `facestream run` on each clip with a temporary config (people named).
  2. face_recognition (dlib HOG + ResNet) in its usual video loop       -> fr_loop.py
  3. facestream's ONNX models in a plain Python onnxruntime loop       -> onnx_loop.py
  4. hnswlib / faiss on a synthetic gallery, and `facestream bench-gallery` when it exists
                                                                        -> vector_peers.py

Usage (through benches/peers/run, which prepares the virtual environment):
  compare.py [--full] [--skip-video] [--skip-vectors]"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from common import CLIPS, ROOT

HERE = Path(__file__).resolve().parent
BIN = ROOT / "target/release/facestream"
RESULTS = HERE / "results.json"
SIZES = [10_000, 100_000]
FULL_SIZES = SIZES + [1_000_000]
ENGINES = ["hnswlib", "faiss-hnsw", "faiss-flat"]


def say(msg=""):
    print(msg, flush=True)


def table(title, header, rows):
    """Prints rows (lists of cells) under a header, columns padded to fit."""
    cells = [[str(c) for c in header]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(header))]
    say(f"\n## {title}")
    for k, r in enumerate(cells):
        say("  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            say("  ".join("-" * w for w in widths))


def fmt(c):
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 10 else f"{c:.1f}"
    if isinstance(c, (list, tuple, set)):
        return ",".join(sorted(c)) or "(nobody)"
    return "-" if c is None else str(c)


def run(cmd, **kw):
    """Runs a command in the repository root, returns CompletedProcess (text)."""
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, **kw)


def python(script, *args):
    """Runs one of the peer scripts with this interpreter and returns its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        p = subprocess.run([sys.executable, str(HERE / script), "--json", out, *args], cwd=HERE, text=True,
                           stdout=subprocess.PIPE, stderr=None)
        if p.returncode != 0:
            return {"error": f"{script} exited {p.returncode}"}
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


# ---------------------------------------------------------------- facestream

def fs_bench(clip_key):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [str(BIN), "--log", "warn", "bench", "--mode", "throughput", "--cameras", "1", "--loops", "1",
               "--clip", str(CLIPS[clip_key].relative_to(ROOT)), "--json", out]
        p = run(cmd)
        if p.returncode != 0:
            return {"error": f"facestream bench exited {p.returncode}: {p.stderr.strip()[-500:]}"}
        reports = json.loads(Path(out).read_text())
        r = reports[0]
        frames = r.get("frames_processed", 0)
        return {
            "tool": "facestream", "clip": clip_key, "command": " ".join([str(Path(cmd[0]).relative_to(ROOT))] + cmd[1:-1] + ["OUT.json"]),
            "frames": frames, "faces": r.get("faces_detected"), "wall_s": r.get("wall_s"),
            "frames_per_s": r.get("frames_per_s"), "faces_per_s": r.get("faces_per_s"),
            "faces_per_frame": r.get("faces_detected", 0) / frames if frames else 0.0,
            "cpu_pct": r.get("cpu_pct"), "peak_rss_mb": r.get("peak_rss_mb"), "report": r,
        }
    finally:
        os.unlink(out)


def run_config(clip_key):
    """config/default.toml with the camera playing the clip flat out and the HTTP server off."""
    section = ""
    out = []
    for line in (ROOT / "config/default.toml").read_text().splitlines():
        s = line.strip()
        if s.startswith("["):
            section = s
        elif section == "[[cameras]]":
            line = re.sub(r"^url\s*=.*", f'url = "{CLIPS[clip_key].relative_to(ROOT)}"', line)
            line = re.sub(r"^max_fps\s*=.*", "max_fps = 0", line)
            line = re.sub(r"^realtime\s*=.*", "realtime = false", line)
        elif section == "[http]":
            line = re.sub(r"^enabled\s*=.*", "enabled = false", line)
        out.append(line)
    return "\n".join(out) + "\n"


def fs_people(clip_key):
    """People named by `facestream run` on the clip (identified events other than unknown)."""
    cfg = ROOT / f".peers-{os.getpid()}-{clip_key}.toml"  # inside the repo: paths resolve from it
    cfg.write_text(run_config(clip_key))
    try:
        t = time.perf_counter()
        p = run([str(BIN), "--log", "warn", "--config", str(cfg), "run"], timeout=600)
        wall = time.perf_counter() - t
    finally:
        cfg.unlink()
    events = []
    for line in p.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    ident = [e for e in events if e.get("event") == "identified"]
    named = sorted({e["person"] for e in ident if e.get("person") not in (None, "unknown")})
    kinds = {}
    for e in events:
        kinds[e.get("event")] = kinds.get(e.get("event"), 0) + 1
    res = {"clip": clip_key, "exit_code": p.returncode, "wall_s": wall, "people_named": named,
           "identified_events": [{k: e.get(k) for k in ("track_id", "person", "distance", "votes")} for e in ident],
           "event_counts": kinds}
    if p.returncode != 0:
        res["stderr_tail"] = p.stderr.strip()[-800:]
    return res


# ---------------------------------------------------------------- vector search

GALLERY_TIMEOUT_S = int(os.environ.get("PEERS_GALLERY_TIMEOUT_S", "1200"))


def parse_gallery_progress(text, samples=3):
    """Rows from bench-gallery's progress lines (stderr), for a run that did not finish: no QPS or
    memory there, only p50/p99 and recall."""
    rows, n = [], None
    for line in text.splitlines():
        m = re.match(r"(\d+) identities x (\d+): exact scan p50 (\S+) us, p99 (\S+) us, recall@1 (\S+)", line)
        if m:
            n = int(m[1])
            rows.append({"identities": n, "samples": int(m[2]), "method": "exact", "build_s": None,
                         "memory_mb": None, "p50_us": float(m[3]), "p99_us": float(m[4]), "qps": None,
                         "recall_at_1": float(m[5]), "agrees_with_exact": 1.0, "partial": True})
            continue
        m = re.match(r"(\d+) identities x \d+: (\w+) index built in (\S+) s", line)
        if m:
            build = float(m[3])
            continue
        m = re.match(r"\s+(\w+) ef (\d+): p50 (\S+) us, p99 (\S+) us, recall@1 (\S+), agrees with exact (\S+)", line)
        if m and n is not None:
            rows.append({"identities": n, "samples": samples, "method": f"{m[1]} ef={m[2]}", "build_s": build,
                         "memory_mb": None, "p50_us": float(m[3]), "p99_us": float(m[4]), "qps": None,
                         "recall_at_1": float(m[5]), "agrees_with_exact": float(m[6]), "partial": True})
    return rows


def fs_bench_gallery(sizes):
    """facestream's own gallery benchmark, when the binary has one: one process per size (so a size
    that runs past PEERS_GALLERY_TIMEOUT_S, default 1200 s, does not lose the others; rows of an
    unfinished size are recovered from its progress lines)."""
    h = run([str(BIN), "bench-gallery", "--help"])
    if h.returncode != 0:
        return {"available": False,
                "note": "`facestream bench-gallery` does not exist in this build: the facestream side "
                        "of the gallery comparison is not available yet"}
    help_text = h.stdout
    flag = next((f for f in ("--sizes", "--identities") if f in help_text), None)
    if flag is None or "--json" not in help_text:
        return {"available": True, "ran": False, "help": help_text,
                "note": "bench-gallery exists but takes neither --sizes nor --identities with --json; "
                        "run it by hand (its --help is stored here)"}
    res = {"available": True, "ran": True, "timeout_s": GALLERY_TIMEOUT_S, "runs": [], "report": []}
    for n in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [str(BIN), "--log", "warn", "bench-gallery", flag, str(n), "--json", out]
        t = time.perf_counter()
        try:
            p = run(cmd, timeout=GALLERY_TIMEOUT_S)
            code, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            code = "timeout"
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        wall = time.perf_counter() - t
        run_info = {"identities": n, "exit_code": code, "wall_s": wall, "stdout": stdout[-4000:],
                    "stderr_tail": stderr.strip()[-2000:]}
        if code == 0:
            res["report"].extend(json.loads(Path(out).read_text()))
        else:
            partial = parse_gallery_progress(stderr)
            run_info["partial_rows"] = len(partial)
            res["report"].extend(partial)
        os.unlink(out)
        res["runs"].append(run_info)
        say(f"  facestream bench-gallery {n}: exit {code} after {wall:.0f} s")
    return res


# ---------------------------------------------------------------- main

def versions():
    out = {}
    for pkg in ("face-recognition", "dlib-bin", "face-recognition-models", "opencv-python-headless",
                "onnxruntime", "numpy", "hnswlib", "faiss-cpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    v = run([str(BIN), "--version"])
    out["facestream"] = v.stdout.strip()
    g = run(["git", "rev-parse", "--short", "HEAD"])
    out["facestream_commit"] = g.stdout.strip()
    d = run(["git", "status", "--porcelain", "--untracked-files=no"])
    out["facestream_tree_dirty"] = bool(d.stdout.strip())
    return out


def machine():
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also 1,000,000 identities in the vector search")
    ap.add_argument("--skip-video", action="store_true")
    ap.add_argument("--skip-vectors", action="store_true")
    a = ap.parse_args()
    t_start = time.perf_counter()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: build facestream first (make build)")
    res = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "versions": versions(),
           "full": a.full}
    clips = list(CLIPS)

    if not a.skip_video:
        say("== facestream (bench throughput + run) ==")
        fs = {"bench": [fs_bench(c) for c in clips], "run": [fs_people(c) for c in clips]}
        say("== face_recognition loop ==")
        fr = python("fr_loop.py", *clips)
        say("== ONNX models, plain Python loop ==")
        ox = python("onnx_loop.py", *clips)
        res["video"] = {"facestream": fs, "face_recognition": fr, "onnx_python_loop": ox}

    if not a.skip_vectors:
        sizes = FULL_SIZES if a.full else SIZES
        say(f"== vector search: identities {sizes} ==")
        rows = []
        for n in sizes:
            for e in ENGINES:
                r = python("vector_peers.py", "--engine", e, "--identities", str(n))
                rows.extend(r if isinstance(r, list) else [dict(r, engine=e, identities=n)])
        res["vectors"] = {"rows": rows, "facestream": fs_bench_gallery(sizes)}

    # A part skipped in this run keeps its figures from the previous results file, marked as such.
    if RESULTS.exists():
        try:
            old = json.loads(RESULTS.read_text())
        except json.JSONDecodeError:
            old = {}
        for part, skipped in (("video", a.skip_video), ("vectors", a.skip_vectors)):
            if skipped and part in old:
                res[part] = dict(old[part], carried_over_from_run_started=old[part].get(
                    "carried_over_from_run_started", old.get("started")))

    res["total_wall_s"] = time.perf_counter() - t_start
    res["machine"]["loadavg_end"] = os.getloadavg()
    report(res)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    say(f"\nwrote {RESULTS.relative_to(ROOT)}; total {res['total_wall_s']:.0f} s")


def per_cpu_s(r):
    """Frames per CPU-second (facestream uses both cores, the Python peers about one)."""
    if r.get("frames_per_s") and r.get("cpu_pct"):
        return r["frames_per_s"] / (r["cpu_pct"] / 100.0)
    return None


def gallery_comparison(res, peer_rows, fs_rows):
    """Side-by-side table of `facestream bench-gallery` (exact scan, HNSW and sketch index, each
    at several ef) and the peers at the same size, plus ratios at equal recall: for each peer
    configuration, facestream's fastest configuration with at least the peer's recall@1."""
    rows, ratios = [], []
    sizes = sorted({r["identities"] for r in fs_rows} | {p.get("identities") for p in peer_rows if "qps" in p})
    for n in sizes:
        for f in (r for r in fs_rows if r["identities"] == n):
            rows.append([f"facestream {f['method']}", n, f["build_s"], f["memory_mb"], f["p50_us"], f["p99_us"],
                         f["qps"], f["recall_at_1"], f["agrees_with_exact"]])
        for p in (p for p in peer_rows if p.get("identities") == n and "qps" in p):
            label = p["engine"] if p["engine"] == "faiss-flat" else f"{p['engine']} ef={p.get('ef')}"
            rows.append([label, n, p["build_s"], p["rss_delta_mb"], p["p50_us"], p["p99_us"], p["qps"],
                         p["recall_identity"], p["recall_exact"]])
            eligible = [f for f in fs_rows if f["identities"] == n and f["recall_at_1"] >= p["recall_identity"]]
            if not eligible:
                ratios.append([f"facestream / {label}", n, "none reaches its recall", None, None, None, None])
                continue
            best = min(eligible, key=lambda f: f["p50_us"])
            ratios.append([f"facestream / {label}", n, best["method"],
                           best["qps"] / p["qps"] if best.get("qps") else None, best["p50_us"] / p["p50_us"],
                           best["p99_us"] / p["p99_us"],
                           best["build_s"] / p["build_s"] if best["build_s"] and p["build_s"] > 0.001 else None])
    table("Gallery search: facestream bench-gallery next to the peers (same sizes, own random draws)",
          ["tool / search", "identities", "build s", "mem MB", "p50 us", "p99 us", "QPS", "recall@1 id",
           "agrees w/ exact"], rows)
    table("Gallery search at equal recall: facestream's fastest configuration with recall@1 >= the peer's "
          "(QPS >1: facestream faster; p50, p99 and build <1: facestream faster)",
          ["pair", "identities", "facestream config", "QPS ratio", "p50 ratio", "p99 ratio", "build-time ratio"],
          ratios)
    res["vectors"]["ratios"] = [dict(zip(["pair", "identities", "facestream_config", "qps_ratio", "p50_ratio",
                                          "p99_ratio", "build_time_ratio"], r)) for r in ratios]


def report(res):
    v = res.get("video")
    if v:
        fs_bench_by = {r["clip"]: r for r in v["facestream"]["bench"]}
        fs_run_by = {r["clip"]: r for r in v["facestream"]["run"]}
        peers = {"face_recognition": v["face_recognition"], "onnx_python_loop": v["onnx_python_loop"]}
        rows = []
        for clip in CLIPS:
            b = fs_bench_by.get(clip, {})
            rows.append(["facestream", clip, b.get("frames"), b.get("frames_per_s"), b.get("faces_per_s"),
                         b.get("faces_per_frame"), b.get("cpu_pct"), per_cpu_s(b),
                         fs_run_by.get(clip, {}).get("people_named")])
            for name, p in peers.items():
                for r in p.get("runs", []):
                    if r["clip"] == clip:
                        rows.append([name, clip, r["frames"], r["frames_per_s"], r["faces_per_s"],
                                     r["faces_per_frame"], r["cpu_pct"], per_cpu_s(r), r["people_named"]])
        table("Video loop: same clips, same gallery photos",
              ["tool", "clip", "frames", "frames/s", "faces/s", "faces/frame", "CPU%", "frames/CPU-s",
               "people named"], rows)
        for name, p in peers.items():
            if "error" in p:
                say(f"  {name}: {p['error']}")
            for e in p.get("enrollment", []):
                if e["faces_found"] == 0:
                    say(f"  {name}: no face in {e['image']} ({e['person']})")
        for clip, r in fs_run_by.items():
            if r.get("exit_code"):
                say(f"  facestream run on {clip} exited {r['exit_code']}: {r.get('stderr_tail', '')}")

        ratios = []
        for clip in CLIPS:
            b = fs_bench_by.get(clip, {})
            named = fs_run_by.get(clip, {}).get("people_named")
            for name, p in peers.items():
                for r in p.get("runs", []):
                    if r["clip"] == clip and b.get("frames_per_s"):
                        ratios.append([f"facestream / {name}", clip,
                                       b["frames_per_s"] / r["frames_per_s"] if r["frames_per_s"] else None,
                                       b["faces_per_s"] / r["faces_per_s"] if r["faces_per_s"] else None,
                                       per_cpu_s(b) / per_cpu_s(r) if per_cpu_s(b) and per_cpu_s(r) else None,
                                       "yes" if named == r["people_named"] else "no"])
        res["ratios"] = [dict(zip(["pair", "clip", "frames_per_s_ratio", "faces_per_s_ratio",
                                   "frames_per_cpu_s_ratio", "same_people_named"], r))
                         for r in ratios]

    vec = res.get("vectors")
    if vec:
        rows = [[r.get("engine"), r.get("identities"), r.get("vectors"), r.get("build_s"), r.get("rss_delta_mb"),
                 r.get("ef"), r.get("p50_us"), r.get("p99_us"), r.get("qps"), r.get("recall_identity"),
                 r.get("recall_exact")] for r in vec["rows"]]
        table("Vector search: synthetic 128-d gallery, 3 samples per identity, 1 thread, one query at a time",
              ["engine", "identities", "vectors", "build s", "RSS +MB", "ef", "p50 us", "p99 us", "QPS",
               "recall@1 id", "recall@1 vs exact"], rows)
        f = vec["facestream"]
        if not f.get("available"):
            say(f"  note: {f['note']}")
        elif not f.get("ran"):
            say(f"  note: {f['note']}")
        else:
            for r in f.get("runs", []):
                if r["exit_code"] != 0:
                    say(f"  note: facestream bench-gallery {r['identities']} did not finish (exit {r['exit_code']} "
                        f"after {r['wall_s']:.0f} s); {r.get('partial_rows', 0)} rows recovered from its progress lines")
            if f.get("report"):
                gallery_comparison(res, vec["rows"], f["report"])

    if res.get("ratios"):
        table("facestream / peer (measured in this run; >1 means facestream is faster)",
              ["pair", "clip", "frames/s ratio", "faces/s ratio", "frames/CPU-s ratio", "same people named"],
              [list(r.values()) for r in res["ratios"]])


if __name__ == "__main__":
    main()
