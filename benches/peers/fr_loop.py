"""Peer 1: the `face_recognition` package (dlib HOG detector + dlib ResNet embeddings) in the video
loop its documentation shows: read each frame with OpenCV, find faces with
face_locations(model="hog") at full resolution, encode them with face_encodings, and name each
face with face_distance against the enrolled gallery at the package's default tolerance (0.6).

Usage: fr_loop.py --json OUT.json CLIP [CLIP ...]   (CLIP: a key of common.CLIPS)
Writes {"enrollment": [...], "runs": [one report per clip]}."""

import argparse
import sys

import cv2
import face_recognition
import numpy as np

from common import CLIPS, Stopwatch, emit, frames_rgb, gallery, log, loop_report

TOLERANCE = 0.6  # face_recognition.compare_faces' default


def enroll():
    """One encoding per gallery photo (the photo's first face, as the package's examples do)."""
    names, encodings, info = [], [], []
    for name, images in gallery():
        for path in images:
            img = face_recognition.load_image_file(str(path))
            enc = face_recognition.face_encodings(img)
            info.append({"person": name, "image": path.name, "faces_found": len(enc)})
            if enc:
                names.append(name)
                encodings.append(enc[0])
            else:
                log(f"face_recognition: no face found in {path.name} ({name} not enrolled from it)")
    return names, encodings, info


def run_clip(key, known_names, known_enc):
    frames = faces = 0
    named = set()
    per_frame = []
    sw = Stopwatch()
    for rgb in frames_rgb(key):
        locations = face_recognition.face_locations(rgb, model="hog")
        encodings = face_recognition.face_encodings(rgb, locations)
        for enc in encodings:
            d = face_recognition.face_distance(known_enc, enc)
            best = int(np.argmin(d))
            if d[best] <= TOLERANCE:
                named.add(known_names[best])
        frames += 1
        faces += len(locations)
        per_frame.append(len(locations))
    wall, cpu = sw.stop()
    return loop_report("face_recognition", key, frames, faces, named, wall, cpu,
                       {"faces_by_frame": per_frame, "tolerance": TOLERANCE,
                        "detector": "dlib HOG, 1 upsample, full resolution"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("clips", nargs="+", choices=sorted(CLIPS))
    a = ap.parse_args()
    known_names, known_enc, info = enroll()
    if not known_enc:
        sys.exit("face_recognition: nobody could be enrolled")
    runs = []
    for key in a.clips:
        rep = run_clip(key, known_names, known_enc)
        log(f"face_recognition {key}: {rep['frames']} frames, {rep['frames_per_s']:.2f} frames/s, "
            f"{rep['faces_per_s']:.2f} faces/s, named {rep['people_named']}")
        runs.append(rep)
    emit({"enrollment": info, "runs": runs}, a.json)


if __name__ == "__main__":
    main()
