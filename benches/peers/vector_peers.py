"""Peer 4: nearest-neighbour search libraries on a synthetic face gallery.

N identities, each a random unit centre in 128-d, with 3 noisy samples around it (Gaussian noise
sigma 0.05 per dimension, then re-normalised), seed 42, so the index holds 3N unit vectors.
Queries: 1000 fresh noisy samples of random identities. One engine per process (so the RSS delta
of its build is its own): hnswlib (M=16, ef_construction=200, inner product on unit vectors), faiss
IndexHNSWFlat (M=16, efConstruction=200, inner product) or faiss IndexFlatIP (exact scan). Built
and queried with one thread; queries go one at a time. For each search ef (16, 32, 64, 128; the
exact scan has none) it reports build time, RSS delta, single-query latency p50/p99, QPS (1000
queries / wall time of the loop), recall@1 of the identity (the nearest sample belongs to the
query's identity) and recall@1 against the exact scan (same nearest sample as brute force).

With --templates the index holds one vector per identity, the normalised mean of its samples (the
gallery design facestream uses), instead of every sample; --efs and --build-threads change the
search breadths tried and the threads used to build (queries stay single-threaded).

Usage: vector_peers.py --engine {hnswlib,faiss-hnsw,faiss-flat} --identities N [--templates]
                       [--efs 16,32,...] [--build-threads T] [--json OUT]"""

import argparse
import gc
import time

import numpy as np
import psutil

from common import emit, log

DIM = 128
SAMPLES = 3
SIGMA = 0.05
QUERIES = 1000
SEED = 42
EFS = (16, 32, 64, 128)
M = 16
EF_CONSTRUCTION = 200


def unit(x):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def dataset(n):
    """(vectors [3n, 128] float32, identity of each vector, queries [1000, 128], their identities)."""
    rng = np.random.default_rng(SEED)
    centres = unit(rng.standard_normal((n, DIM), dtype=np.float32))
    data = np.repeat(centres, SAMPLES, axis=0)
    data += rng.standard_normal(data.shape, dtype=np.float32) * np.float32(SIGMA)
    unit(data)
    ident = np.repeat(np.arange(n), SAMPLES)
    qid = rng.integers(0, n, QUERIES)
    q = centres[qid] + rng.standard_normal((QUERIES, DIM), dtype=np.float32) * np.float32(SIGMA)
    return data, ident, unit(q), qid


def exact_top1(data, q, chunk=200_000):
    """Brute-force nearest sample (largest inner product) of every query."""
    best = np.full(len(q), -np.inf, np.float32)
    arg = np.zeros(len(q), np.int64)
    for s in range(0, len(data), chunk):
        sims = q @ data[s:s + chunk].T
        a = sims.argmax(1)
        v = sims[np.arange(len(q)), a]
        better = v > best
        best[better] = v[better]
        arg[better] = a[better] + s
    return arg


def rss_mb():
    return psutil.Process().memory_info().rss / 2**20


def measure(search, q, qid, ident, truth):
    """Runs the queries one at a time; returns latency, QPS and both recalls."""
    for i in range(min(20, len(q))):  # warm-up
        search(q[i:i + 1])
    got = np.zeros(len(q), np.int64)
    lat = np.zeros(len(q))
    t0 = time.perf_counter()
    for i in range(len(q)):
        t = time.perf_counter()
        got[i] = search(q[i:i + 1])
        lat[i] = time.perf_counter() - t
    wall = time.perf_counter() - t0
    return {
        "p50_us": float(np.percentile(lat, 50) * 1e6),
        "p99_us": float(np.percentile(lat, 99) * 1e6),
        "qps": len(q) / wall,
        "recall_identity": float(np.mean(ident[got] == qid)),
        "recall_exact": float(np.mean(got == truth)),
    }


def templates(data, n):
    """One unit vector per identity: the normalised mean of its samples (rows are identity-major)."""
    return unit(data.reshape(n, SAMPLES, DIM).mean(axis=1)), np.arange(n)


def build(engine, data, threads=1):
    """Builds the index (`threads` for hnswlib's build); returns (search setter, search function)."""
    if engine == "hnswlib":
        import hnswlib
        idx = hnswlib.Index(space="ip", dim=DIM)
        idx.init_index(max_elements=len(data), ef_construction=EF_CONSTRUCTION, M=M, random_seed=SEED)
        idx.set_num_threads(threads)
        idx.add_items(data, np.arange(len(data)), num_threads=threads)
        idx.set_num_threads(1)
        return idx, idx.set_ef, lambda x: int(idx.knn_query(x, k=1, num_threads=1)[0][0, 0])
    import faiss
    faiss.omp_set_num_threads(1)
    if engine == "faiss-hnsw":
        idx = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = EF_CONSTRUCTION
        idx.add(data)

        def set_ef(ef):
            idx.hnsw.efSearch = ef
        return idx, set_ef, lambda x: int(idx.search(x, 1)[1][0, 0])
    if engine == "faiss-flat":
        idx = faiss.IndexFlatIP(DIM)
        idx.add(data)
        return idx, None, lambda x: int(idx.search(x, 1)[1][0, 0])
    raise SystemExit(f"unknown engine {engine}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, choices=["hnswlib", "faiss-hnsw", "faiss-flat"])
    ap.add_argument("--identities", type=int, required=True)
    ap.add_argument("--templates", action="store_true", help="index one mean vector per identity")
    ap.add_argument("--efs", default=",".join(map(str, EFS)), help="search breadths, comma separated")
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    efs = tuple(int(x) for x in a.efs.split(","))
    t = time.perf_counter()
    data, ident, q, qid = dataset(a.identities)
    if a.templates:
        data, ident = templates(data, a.identities)
    truth = exact_top1(data, q)
    log(f"{a.engine} N={a.identities}: data + exact answers in {time.perf_counter() - t:.1f} s")
    gc.collect()
    rss0 = rss_mb()
    t = time.perf_counter()
    idx, set_ef, search = build(a.engine, data, a.build_threads)
    build_s = time.perf_counter() - t
    rss_delta = rss_mb() - rss0
    base = {"engine": a.engine, "identities": a.identities, "vectors": len(data),
            "build_s": build_s, "rss_delta_mb": rss_delta, "threads": 1, "build_threads": a.build_threads,
            "templates": a.templates}
    rows = []
    for ef in (efs if set_ef else (None,)):
        if set_ef:
            set_ef(ef)
        row = dict(base, ef=ef, **measure(search, q, qid, ident, truth))
        log(f"  {a.engine} N={a.identities} ef={ef}: build {build_s:.1f} s, +{rss_delta:.0f} MB, "
            f"p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us, {row['qps']:.0f} QPS, "
            f"recall id {row['recall_identity']:.3f}, vs exact {row['recall_exact']:.3f}")
        rows.append(row)
    del idx
    emit(rows, a.json)


if __name__ == "__main__":
    main()
