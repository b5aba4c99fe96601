"""Peer 2: facestream's own ONNX models driven from Python in a plain loop, the glue a user would
write with onnxruntime + OpenCV + numpy. Per frame: the MTCNN cascade (P-Net image pyramid,
R-Net, O-Net; min face 40, factor 0.709, thresholds 0.6/0.7/0.7, NMS as in the original MTCNN),
face-api's crop of every face (square of side mean(eye-to-mouth-centre distance)/0.45 with the
eyes+mouth centroid at (0.5, 0.43), cv2.warpAffine to 150x150 with a black border), and the
face-api ResNet embedding of every face, every frame (one batch per frame). Names come from the
nearest gallery embedding at Euclidean distance <= 0.40 between unit vectors. One thread
(intra_op_num_threads=1), CPU. No tracking, no batching across frames, no threads.

Usage: onnx_loop.py --json OUT.json CLIP [CLIP ...]   (CLIP: a key of common.CLIPS)
Writes {"enrollment": [...], "runs": [one report per clip]}."""

import argparse
import sys

import cv2
import numpy as np
import onnxruntime as ort

from common import CLIPS, ROOT, Stopwatch, emit, frames_rgb, gallery, log, loop_report

MODELS = ROOT / "models"
MIN_FACE = 40.0
FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
SAME_PERSON = 0.40


def session(name):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / name), so, providers=["CPUExecutionProvider"])


def nms(boxes, thresh, mode):
    """Greedy NMS over rows (x1, y1, x2, y2, score, ...); areas with the +1 of the original code.
    mode "union": IoU; "min": intersection over the smaller box. Returns kept row indices."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s)[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if mode == "min":
            ov = inter / np.minimum(area[i], area[rest])
        else:
            ov = inter / (area[i] + area[rest] - inter)
        order = rest[ov <= thresh]
    return np.array(keep, dtype=np.int64)


def regress(boxes, reg):
    """Applies box regression (dx1, dy1, dx2, dy2), relative to the box's size (+1 convention)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.copy()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def square(boxes):
    """Makes each box a square around its centre with side max(w, h)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def crops(img, boxes, size):
    """Cuts each (integer, inclusive) box out of img, zero outside the image, resizes to size x size,
    normalises and transposes to the nets' [N, W, H, 3] layout."""
    h, w = img.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, b in enumerate(boxes):
        x1, y1, x2, y2 = (int(v) for v in b[:4])
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        patch = np.zeros((bh, bw, 3), np.float32)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            patch[sy1 - y1:sy2 - y1 + 1, sx1 - x1:sx2 - x1 + 1] = img[sy1:sy2 + 1, sx1:sx2 + 1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    out = (out - 127.5) * 0.0078125
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3))


class Mtcnn:
    def __init__(self):
        self.pnet = session("mtcnn_pnet.onnx")
        self.rnet = session("mtcnn_rnet.onnx")
        self.onet = session("mtcnn_onet.onnx")

    def detect(self, img):
        """img: HxWx3 float32 RGB. Returns (boxes [N, 5] x1 y1 x2 y2 score, points [N, 10] x1..x5 y1..y5)."""
        h, w = img.shape[:2]
        m = 12.0 / MIN_FACE
        minl = min(h, w) * m
        scales = []
        while minl >= 12:
            scales.append(m * FACTOR ** len(scales))
            minl *= FACTOR

        # Stage 1: P-Net on each pyramid level (fed transposed: [1, W, H, 3]).
        found = []
        for s in scales:
            hs, ws = int(np.ceil(h * s)), int(np.ceil(w * s))
            level = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)
            level = ((level - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
            reg, prob = self.pnet.run(["conv2d_4", "softmax"], {"input_1": np.ascontiguousarray(level)})
            p = prob[0, :, :, 1]  # [W', H']: first axis is x
            xi, yi = np.nonzero(p >= THRESHOLDS[0])
            if xi.size == 0:
                continue
            r = reg[0, xi, yi, :]
            bx = np.stack([np.fix((2 * xi + 1) / s), np.fix((2 * yi + 1) / s),
                           np.fix((2 * xi + 12) / s), np.fix((2 * yi + 12) / s), p[xi, yi]], 1)
            cand = np.hstack([bx, r])
            found.append(cand[nms(cand, 0.5, "union")])
        if not found:
            return np.zeros((0, 5)), np.zeros((0, 10))
        boxes = np.vstack(found)
        boxes = boxes[nms(boxes, 0.7, "union")]
        # The P-Net regression uses the box size without the +1.
        bw = boxes[:, 2] - boxes[:, 0]
        bh = boxes[:, 3] - boxes[:, 1]
        boxes = np.stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                          boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh, boxes[:, 4]], 1)
        boxes = np.fix(square(boxes))

        # Stage 2: R-Net on 24x24 crops.
        reg, prob = self.rnet.run(["dense_2", "softmax_1"], {"input_2": crops(img, boxes, 24)})
        ok = prob[:, 1] > THRESHOLDS[1]
        boxes = np.hstack([boxes[ok, :4], prob[ok, 1:2]])
        reg = reg[ok]
        if len(boxes) == 0:
            return np.zeros((0, 5)), np.zeros((0, 10))
        keep = nms(boxes, 0.7, "union")
        boxes = np.fix(square(regress(boxes[keep], reg[keep])))

        # Stage 3: O-Net on 48x48 crops: final boxes and five landmarks.
        reg, pts, prob = self.onet.run(["dense_5", "dense_6", "softmax_2"], {"input_3": crops(img, boxes, 48)})
        ok = prob[:, 1] > THRESHOLDS[2]
        boxes = np.hstack([boxes[ok, :4], prob[ok, 1:2]])
        reg, pts = reg[ok], pts[ok].copy()
        if len(boxes) == 0:
            return np.zeros((0, 5)), np.zeros((0, 10))
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        pts[:, 0:5] = bw * pts[:, 0:5] + boxes[:, 0:1] - 1
        pts[:, 5:10] = bh * pts[:, 5:10] + boxes[:, 1:2] - 1
        boxes = regress(boxes, reg)
        keep = nms(boxes, 0.7, "min")
        return boxes[keep], pts[keep]


def align(img_u8, pts):
    """face-api's alignDlib crop (no rotation) of one face to 150x150 float32 RGB 0..255."""
    eyes = np.array([[pts[0], pts[5]], [pts[1], pts[6]]], np.float64)
    mouth = np.array([(pts[3] + pts[4]) / 2, (pts[8] + pts[9]) / 2])
    d = np.mean(np.linalg.norm(eyes - mouth, axis=1))
    side = np.floor(d / 0.45)
    if side < 1:
        return None
    cx, cy = np.vstack([eyes, mouth[None]]).mean(0)
    x0 = np.floor(max(0.0, cx - 0.5 * side))
    y0 = np.floor(max(0.0, cy - 0.43 * side))
    k = 150.0 / side
    m = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]], np.float64)
    out = cv2.warpAffine(img_u8, m, (150, 150), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return out.astype(np.float32)


class Pipeline:
    def __init__(self):
        self.mtcnn = Mtcnn()
        self.embedder = session("faceapi_recognition.onnx")

    def faces(self, rgb_u8):
        """All faces of one RGB uint8 frame: (boxes [N, 5], unit descriptors [N, 128])."""
        boxes, pts = self.mtcnn.detect(rgb_u8.astype(np.float32))
        chips, kept = [], []
        for i, p in enumerate(pts):
            c = align(rgb_u8, p)
            if c is not None:
                chips.append(c)
                kept.append(i)
        if not chips:
            return boxes[:0], np.zeros((0, 128), np.float32)
        desc = self.embedder.run(["descriptor"], {"input": np.stack(chips)})[0]
        desc /= np.linalg.norm(desc, axis=1, keepdims=True)
        return boxes[kept], desc


def enroll(pipe):
    """One unit descriptor per gallery photo, from its highest-scoring face (not the largest)."""
    names, descs, info = [], [], []
    for name, images in gallery():
        for path in images:
            bgr = cv2.imread(str(path))
            boxes, desc = pipe.faces(np.ascontiguousarray(bgr[:, :, ::-1]))
            info.append({"person": name, "image": path.name, "faces_found": len(boxes)})
            if len(boxes):
                names.append(name)
                descs.append(desc[int(np.argmax(boxes[:, 4]))])
            else:
                log(f"onnx loop: no face found in {path.name} ({name} not enrolled from it)")
    return names, np.array(descs, np.float32), info


def run_clip(pipe, key, names, gal):
    frames = faces = faces_09 = 0
    named = set()
    per_frame = []
    sw = Stopwatch()
    for rgb in frames_rgb(key):
        boxes, desc = pipe.faces(rgb)
        if len(desc):
            d = np.linalg.norm(desc[:, None, :] - gal[None, :, :], axis=2)
            best = d.argmin(1)
            for j, b in enumerate(best):
                if d[j, b] <= SAME_PERSON:
                    named.add(names[b])
        frames += 1
        faces += len(boxes)
        faces_09 += int((boxes[:, 4] >= 0.9).sum()) if len(boxes) else 0
        per_frame.append(len(boxes))
    wall, cpu = sw.stop()
    return loop_report("onnx_python_loop", key, frames, faces, named, wall, cpu,
                       {"faces_by_frame": per_frame, "faces_score_ge_0_9": faces_09,
                        "threshold": SAME_PERSON, "onnxruntime": ort.__version__})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("clips", nargs="+", choices=sorted(CLIPS))
    a = ap.parse_args()
    cv2.setNumThreads(1)
    pipe = Pipeline()
    names, gal, info = enroll(pipe)
    if not names:
        sys.exit("onnx loop: nobody could be enrolled")
    runs = []
    for key in a.clips:
        rep = run_clip(pipe, key, names, gal)
        log(f"onnx python loop {key}: {rep['frames']} frames, {rep['frames_per_s']:.2f} frames/s, "
            f"{rep['faces_per_s']:.2f} faces/s, named {rep['people_named']}")
        runs.append(rep)
    emit({"enrollment": info, "runs": runs}, a.json)


if __name__ == "__main__":
    main()
