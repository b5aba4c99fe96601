"""Helpers shared by the peer benchmarks: repository paths, the gallery of facestream's default
configuration (read from config/default.toml, so every tool enrolls the same photos), the clips,
and a timer that reports wall time and the CPU time of this process."""

import json
import os
import resource
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIPS = {
    "video_01": ROOT / "tests/fixtures/video_01.mp4",
    "ff-region-face-motion": ROOT / "tests/fixtures/ff-region-face-motion.avi",
}


def frames_rgb(key):
    """Yields the clip's frames as contiguous RGB arrays, the way both video loops read them."""
    import cv2  # only the video loops need OpenCV
    import numpy as np

    cap = cv2.VideoCapture(str(CLIPS[key]))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {CLIPS[key]}")
    while True:
        ok, bgr = cap.read()
        if not ok:
            return
        yield np.ascontiguousarray(bgr[:, :, ::-1])


def gallery():
    """[(name, [absolute image paths])] as in config/default.toml (paths relative to that file's
    folder's parent, i.e. the repository root, as facestream resolves the embedded default)."""
    cfg = tomllib.loads((ROOT / "config/default.toml").read_text())
    return [(p["name"], [ROOT / i for i in p["images"]]) for p in cfg["gallery"]["people"]]


class Stopwatch:
    """Wall and CPU seconds (user + system, this process and its threads) since start."""

    def __init__(self):
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def stop(self):
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        return wall, cpu


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loop_report(tool, clip, frames, faces, names, wall, cpu, extra=None):
    """The common shape of a video-loop result (one tool on one clip)."""
    rep = {
        "tool": tool,
        "clip": clip,
        "frames": frames,
        "faces": faces,
        "wall_s": wall,
        "frames_per_s": frames / wall if wall > 0 else 0.0,
        "faces_per_s": faces / wall if wall > 0 else 0.0,
        "faces_per_frame": faces / frames if frames else 0.0,
        "cpu_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "people_named": sorted(names),
    }
    if extra:
        rep.update(extra)
    return rep


def emit(obj, path=None):
    """Writes the result as JSON to `path` (or stdout)."""
    text = json.dumps(obj, indent=2)
    if path:
        Path(path).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


def log(msg):
    print(msg, file=sys.stderr, flush=True)
