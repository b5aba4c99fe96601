//! Hierarchical navigable small world graph (Malkov & Yashunin, 2018) over unit vectors, built for
//! the gallery: flat arrays (vectors node-major, fixed-size link lists), an AVX2 dot product as the
//! distance (1 - cos), a reusable visited-stamp array per thread, parallel build on scoped threads
//! with one lock per node, and a dump format that reloads in seconds.
//!
//! Node ids are dense (0..len). The index knows nothing of persons or removal: the gallery maps
//! nodes to persons and skips removed ones.

use std::cell::RefCell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::embed::DIM;

/// Graph parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Links per node on the upper layers (layer 0 keeps twice as many).
    pub m: usize,
    /// Search breadth while inserting.
    pub ef_construction: usize,
    /// Seed of the level draws.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self { m: 16, ef_construction: 100, seed: 0x5EED }
    }
}

/// (distance, node) ordered by distance, ties by node.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cand(f32, u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

pub struct Hnsw {
    params: Params,
    m0: usize,
    vectors: Vec<f32>,
    /// The vectors as int8 codes with one scale per node: the graph is walked on these (a
    /// quarter of the memory traffic); callers re-rank the final candidates exactly.
    codes: Vec<i8>,
    scales: Vec<f32>,
    levels: Vec<u8>,
    /// Layer 0: per node `[count, id × m0]`.
    links0: Vec<AtomicU32>,
    /// Layers 1..=level: per node `[count, id × m]` per layer, back to back.
    upper: Vec<Box<[AtomicU32]>>,
    locks: Vec<Mutex<()>>,
    /// (entry node, top layer), `None` while empty.
    entry: Mutex<Option<(u32, usize)>>,
}

thread_local! {
    /// Visited stamps of this thread's searches: a node is visited when its stamp equals the epoch.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

fn level_for(seed: u64, node: u64, ml: f64) -> u8 {
    // splitmix64 of (seed, node): independent of build order and thread timing.
    let mut z = seed ^ node.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    ((-u.ln() * ml).floor() as u64).min(15) as u8
}

impl Hnsw {
    pub fn new(params: Params) -> Self {
        Self {
            params,
            m0: params.m * 2,
            vectors: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            locks: Vec::new(),
            entry: Mutex::new(None),
        }
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub fn params(&self) -> Params {
        self.params
    }

    pub fn vector(&self, node: u32) -> &[f32] {
        let i = node as usize * DIM;
        &self.vectors[i..i + DIM]
    }

    /// Bytes held by the vectors and the graph.
    pub fn memory_bytes(&self) -> usize {
        self.vectors.len() * 4
            + self.codes.len()
            + self.scales.len() * 4
            + self.links0.len() * 4
            + self.upper.iter().map(|u| u.len() * 4 + 16).sum::<usize>()
            + self.levels.len() * (1 + std::mem::size_of::<Mutex<()>>())
    }

    fn push_codes(&mut self, vectors: &[f32]) {
        self.vectors.extend_from_slice(vectors);
        for v in vectors.chunks_exact(DIM) {
            let (code, scale) = quantize(v);
            self.codes.extend_from_slice(&code);
            self.scales.push(scale);
        }
    }

    /// Appends nodes (vectors only, not yet linked); returns the first new node id.
    fn push_nodes(&mut self, vectors: &[f32]) -> u32 {
        assert_eq!(vectors.len() % DIM, 0, "vectors must be {DIM}-d");
        let first = self.len();
        let n = vectors.len() / DIM;
        let ml = 1.0 / (self.params.m as f64).ln();
        self.push_codes(vectors);
        self.links0.reserve(n * (self.m0 + 1));
        for i in first..first + n {
            let level = level_for(self.params.seed, i as u64, ml);
            self.levels.push(level);
            self.links0.extend((0..=self.m0).map(|_| AtomicU32::new(0)));
            let up = level as usize * (self.params.m + 1);
            self.upper.push((0..up).map(|_| AtomicU32::new(0)).collect());
            self.locks.push(Mutex::new(()));
        }
        first as u32
    }

    /// Builds over `vectors` (node-major, unit length) with `threads` inserting in parallel.
    pub fn build(vectors: &[f32], params: Params, threads: usize, progress: &(dyn Fn(usize) + Sync)) -> Self {
        let mut h = Self::new(params);
        h.push_nodes(vectors);
        let n = h.len();
        let threads = threads.clamp(1, 64);
        let done = std::sync::atomic::AtomicUsize::new(0);
        // The first nodes go in alone so the parallel inserts start from a connected graph.
        let seed_nodes = n.min(256);
        for i in 0..seed_nodes {
            h.link(i as u32);
        }
        let next = std::sync::atomic::AtomicUsize::new(seed_nodes);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        h.link(i as u32);
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if d.is_multiple_of(65_536) {
                            progress(d + seed_nodes);
                        }
                    }
                });
            }
        });
        progress(n);
        h
    }

    /// Adds one vector and links it; searchable at once. Returns its node id.
    pub fn insert(&mut self, v: &[f32]) -> u32 {
        let node = self.push_nodes(v);
        self.link(node);
        node
    }

    fn links(&self, node: u32, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            let s = node as usize * (self.m0 + 1);
            &self.links0[s..s + self.m0 + 1]
        } else {
            let s = (layer - 1) * (self.params.m + 1);
            &self.upper[node as usize][s..s + self.params.m + 1]
        }
    }

    fn neighbours(&self, node: u32, layer: usize, out: &mut Vec<u32>) {
        let l = self.links(node, layer);
        let n = (l[0].load(Ordering::Acquire) as usize).min(l.len() - 1);
        out.clear();
        out.extend(l[1..=n].iter().map(|a| a.load(Ordering::Relaxed)));
    }

    fn set_links(&self, node: u32, layer: usize, ids: &[u32]) {
        let l = self.links(node, layer);
        for (slot, &id) in l[1..].iter().zip(ids) {
            slot.store(id, Ordering::Relaxed);
        }
        l[0].store(ids.len() as u32, Ordering::Release);
    }

    #[inline]
    fn code(&self, node: u32) -> &[i8] {
        let i = node as usize * DIM;
        &self.codes[i..i + DIM]
    }

    /// 1 - cos between a quantised query and a node.
    #[inline]
    fn dist(&self, q: &Query, node: u32) -> f32 {
        1.0 - q.scale * self.scales[node as usize] * dot_i8(&q.code, self.code(node)) as f32
    }

    #[inline]
    fn dist_nodes(&self, a: u32, b: u32) -> f32 {
        1.0 - self.scales[a as usize] * self.scales[b as usize] * dot_i8(self.code(a), self.code(b)) as f32
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let i = node as usize * DIM;
            if i < self.codes.len() {
                // SAFETY: a prefetch of an address inside the codes array; it never faults.
                unsafe {
                    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                    let p = self.codes.as_ptr().add(i);
                    _mm_prefetch::<_MM_HINT_T0>(p);
                    _mm_prefetch::<_MM_HINT_T0>(p.add(64));
                }
            }
        }
    }

    /// Greedy descent on one layer: the nearest node reachable from `ep`.
    fn greedy(&self, q: &Query, mut ep: Cand, layer: usize, buf: &mut Vec<u32>) -> Cand {
        loop {
            let mut improved = false;
            self.neighbours(ep.1, layer, buf);
            for &e in buf.iter() {
                self.prefetch(e);
            }
            for &e in buf.iter() {
                let d = self.dist(q, e);
                if d < ep.0 {
                    ep = Cand(d, e);
                    improved = true;
                }
            }
            if !improved {
                return ep;
            }
        }
    }

    /// Beam search on one layer; the `ef` nearest found, nearest first.
    fn search_layer(&self, q: &Query, eps: &[Cand], ef: usize, layer: usize) -> Vec<Cand> {
        VISITED.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (marks, epoch) = &mut *guard;
            if marks.len() < self.len() {
                marks.resize(self.len(), 0);
            }
            *epoch = epoch.wrapping_add(1);
            if *epoch == 0 {
                marks.iter_mut().for_each(|m| *m = 0);
                *epoch = 1;
            }
            let epoch = *epoch;
            let mut cands: BinaryHeap<std::cmp::Reverse<Cand>> = BinaryHeap::with_capacity(ef * 2);
            let mut best: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef + 1);
            for &c in eps {
                marks[c.1 as usize] = epoch;
                cands.push(std::cmp::Reverse(c));
                best.push(c);
            }
            while best.len() > ef {
                best.pop();
            }
            let mut buf = Vec::with_capacity(self.m0);
            while let Some(std::cmp::Reverse(c)) = cands.pop() {
                if best.len() >= ef && c.0 > best.peek().map_or(f32::INFINITY, |b| b.0) {
                    break;
                }
                self.neighbours(c.1, layer, &mut buf);
                // Keep the neighbours not seen yet, marking them seen in the same pass.
                buf.retain(|&e| std::mem::replace(&mut marks[e as usize], epoch) != epoch);
                for &e in &buf {
                    self.prefetch(e);
                }
                for &e in &buf {
                    let d = self.dist(q, e);
                    if best.len() < ef || d < best.peek().map_or(f32::INFINITY, |b| b.0) {
                        cands.push(std::cmp::Reverse(Cand(d, e)));
                        best.push(Cand(d, e));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            }
            best.into_sorted_vec()
        })
    }

    /// The heuristic of the paper (alg. 4): a candidate is kept when it is nearer to the new node
    /// than to every neighbour kept so far, which keeps links spread in all directions.
    fn select(&self, sorted: &[Cand], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in sorted {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|&k| self.dist_nodes(c.1, k) > c.0) {
                kept.push(c.1);
            }
        }
        kept
    }

    /// Links a node whose vector and level are in place.
    fn link(&self, node: u32) {
        let level = self.levels[node as usize] as usize;
        let q = Query::new(self.vector(node));
        let start = {
            let mut entry = self.entry.lock().unwrap_or_else(|p| p.into_inner());
            match *entry {
                None => {
                    *entry = Some((node, level));
                    return;
                }
                Some(e) => e,
            }
        };
        let (ep_node, top) = start;
        let mut buf = Vec::with_capacity(self.m0);
        let mut ep = Cand(self.dist(&q, ep_node), ep_node);
        for layer in (level + 1..=top).rev() {
            ep = self.greedy(&q, ep, layer, &mut buf);
        }
        let mut eps = vec![ep];
        for layer in (0..=level.min(top)).rev() {
            let found = self.search_layer(&q, &eps, self.params.ef_construction, layer);
            let cap = if layer == 0 { self.m0 } else { self.params.m };
            let chosen = self.select(&found, self.params.m);
            {
                let _g = self.locks[node as usize].lock().unwrap_or_else(|p| p.into_inner());
                self.set_links(node, layer, &chosen);
            }
            for &nb in &chosen {
                let _g = self.locks[nb as usize].lock().unwrap_or_else(|p| p.into_inner());
                self.neighbours(nb, layer, &mut buf);
                if buf.contains(&node) {
                    continue;
                }
                if buf.len() < cap {
                    buf.push(node);
                    self.set_links(nb, layer, &buf);
                } else {
                    // Full: choose again among the old links and the new node.
                    let mut all: Vec<Cand> = buf.iter().chain(std::iter::once(&node)).map(|&x| Cand(self.dist_nodes(nb, x), x)).collect();
                    all.sort_unstable();
                    let kept = self.select(&all, cap);
                    self.set_links(nb, layer, &kept);
                }
            }
            eps = found;
        }
        if level > top {
            let mut entry = self.entry.lock().unwrap_or_else(|p| p.into_inner());
            if entry.is_none_or(|(_, t)| level > t) {
                *entry = Some((node, level));
            }
        }
    }

    /// The `k` nearest nodes to unit vector `q` with search breadth `ef`, nearest first, as
    /// (node, 1 - cos on the int8 codes: re-rank exactly where it matters).
    pub fn search(&self, q: &[f32], k: usize, ef: usize) -> Vec<(u32, f32)> {
        let Some((ep_node, top)) = *self.entry.lock().unwrap_or_else(|p| p.into_inner()) else { return Vec::new() };
        let q = Query::new(q);
        let mut buf = Vec::with_capacity(self.m0);
        let mut ep = Cand(self.dist(&q, ep_node), ep_node);
        for layer in (1..=top).rev() {
            ep = self.greedy(&q, ep, layer, &mut buf);
        }
        let mut found = self.search_layer(&q, &[ep], ef.max(k), 0);
        found.truncate(k);
        found.into_iter().map(|c| (c.1, c.0)).collect()
    }

    const MAGIC: &'static [u8; 8] = b"FSHNSW01";

    /// Writes the graph (not the vectors: the caller rebuilds those from its store and checks
    /// them against `fingerprint`). Written to a temporary file, then renamed.
    pub fn save(&self, path: &Path, fingerprint: u64) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            w.write_all(Self::MAGIC)?;
            let (ep, top) = self.entry.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or((u32::MAX, 0));
            for x in [self.params.m as u64, self.params.ef_construction as u64, self.params.seed, self.len() as u64, fingerprint, ep as u64, top as u64] {
                w.write_all(&x.to_le_bytes())?;
            }
            w.write_all(&self.levels)?;
            let mut put = |a: &AtomicU32| w.write_all(&a.load(Ordering::Relaxed).to_le_bytes());
            for a in &self.links0 {
                put(a)?;
            }
            for u in &self.upper {
                for a in u.iter() {
                    put(a)?;
                }
            }
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Reads a graph written by [`Hnsw::save`] for these vectors; `None` when the file is missing,
    /// malformed, or made for other vectors (its fingerprint differs).
    pub fn load(path: &Path, vectors: &[f32], fingerprint: u64) -> Option<Self> {
        let mut r = std::io::BufReader::new(std::fs::File::open(path).ok()?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).ok()?;
        if &magic != Self::MAGIC {
            return None;
        }
        let mut head = [0u64; 7];
        for x in head.iter_mut() {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).ok()?;
            *x = u64::from_le_bytes(b);
        }
        let [m, efc, seed, n, fp, ep, top] = head;
        // Every header value is bounded before it sizes anything (a damaged or hostile dump must
        // not overflow a length or make the next insert allocate 2^40 candidates).
        let n_ok = usize::try_from(n).ok().and_then(|n| n.checked_mul(DIM)) == Some(vectors.len());
        let ep_ok = ep == u32::MAX as u64 || ep < n;
        if fp != fingerprint || !n_ok || !(2..=128).contains(&m) || !(1..=4096).contains(&efc) || !ep_ok || top > u8::MAX as u64 {
            return None;
        }
        let params = Params { m: m as usize, ef_construction: efc as usize, seed };
        let mut h = Self::new(params);
        h.push_codes(vectors);
        h.levels = vec![0u8; n as usize];
        r.read_exact(&mut h.levels).ok()?;
        let mut word = || -> Option<u32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).ok()?;
            Some(u32::from_le_bytes(b))
        };
        let mut links0 = Vec::with_capacity(n as usize * (h.m0 + 1));
        for _ in 0..n as usize * (h.m0 + 1) {
            links0.push(AtomicU32::new(word()?));
        }
        let mut upper = Vec::with_capacity(n as usize);
        for &l in &h.levels {
            let len = l as usize * (params.m + 1);
            let mut u = Vec::with_capacity(len);
            for _ in 0..len {
                u.push(AtomicU32::new(word()?));
            }
            upper.push(u.into_boxed_slice());
        }
        h.links0 = links0;
        h.upper = upper;
        h.locks = (0..n).map(|_| Mutex::new(())).collect();
        let entry = if ep == u32::MAX as u64 { None } else { Some((ep as u32, top as usize)) };
        if let Err(why) = h.check_links(entry) {
            tracing::warn!(dump = %path.display(), why, "gallery index dump is inconsistent; rebuilding instead");
            return None;
        }
        *h.entry.lock().unwrap_or_else(|p| p.into_inner()) = entry;
        Some(h)
    }

    /// Every link of a loaded graph points at a node that exists on that layer, no list is longer
    /// than its layer allows, and the entry point is the (a) top node: a damaged dump would
    /// otherwise index out of bounds in the middle of a search.
    fn check_links(&self, entry: Option<(u32, usize)>) -> Result<(), &'static str> {
        let n = self.levels.len();
        let top = self.levels.iter().copied().max().unwrap_or(0) as usize;
        match entry {
            None if n > 0 => return Err("no entry point in a non-empty graph"),
            Some((ep, layer)) if ep as usize >= n || self.levels[ep as usize] as usize != layer || layer != top => return Err("entry point is not a top-layer node"),
            _ => {}
        }
        let stride0 = self.m0 + 1;
        for node in 0..n {
            let block = &self.links0[node * stride0..(node + 1) * stride0];
            let count = block[0].load(Ordering::Relaxed) as usize;
            if count > self.m0 || block[1..=count].iter().any(|l| l.load(Ordering::Relaxed) as usize >= n) {
                return Err("bad layer-0 link list");
            }
            let stride = self.params.m + 1;
            for layer in 1..=self.levels[node] as usize {
                let block = &self.upper[node][(layer - 1) * stride..layer * stride];
                let count = block[0].load(Ordering::Relaxed) as usize;
                if count > self.params.m {
                    return Err("upper-layer link list too long");
                }
                for l in &block[1..=count] {
                    let target = l.load(Ordering::Relaxed) as usize;
                    if target >= n || (self.levels[target] as usize) < layer {
                        return Err("upper-layer link to a node not on that layer");
                    }
                }
            }
        }
        Ok(())
    }
}

/// A query quantised once for a whole search.
struct Query {
    code: [i8; DIM],
    scale: f32,
}

impl Query {
    fn new(v: &[f32]) -> Self {
        let (code, scale) = quantize(v);
        Self { code, scale }
    }
}

/// Symmetric int8 quantisation with one scale per vector (largest component -> 127).
fn quantize(v: &[f32]) -> ([i8; DIM], f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let mut code = [0i8; DIM];
    for (c, x) in code.iter_mut().zip(v) {
        *c = (x / max * 127.0).round().clamp(-127.0, 127.0) as i8;
    }
    (code, max / 127.0)
}

/// Integer dot product of two codes: AVX2 when the processor has it, else a plain loop.
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        // The standard library caches the detection: this is one atomic load.
        if is_x86_feature_detected!("avx2") && a.len() == DIM && b.len() == DIM {
            // SAFETY: AVX2 was detected on this processor; both slices hold DIM (a multiple of
            // 16) values, so every 16-byte load is in bounds.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < DIM {
        // SAFETY (caller): i + 16 <= DIM = a.len() = b.len().
        let va = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(a.as_ptr().add(i) as *const __m128i) });
        let vb = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i) });
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(va, vb));
        i += 16;
    }
    let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    let s = _mm_hadd_epi32(s, s);
    let s = _mm_hadd_epi32(s, s);
    _mm_cvtsi128_si32(s)
}

/// FNV-1a over the bytes of the vectors: ties a dump to the exact vectors it was built for.
pub fn fingerprint(vectors: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in vectors {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gallery::index::dot;

    /// `n` seeded pseudo-random unit vectors, node-major.
    pub(crate) fn random_unit(n: usize, seed: u64) -> Vec<f32> {
        crate::embed::random_units(n, seed)
    }

    fn exact(vectors: &[f32], q: &[f32]) -> u32 {
        (0..vectors.len() / DIM).map(|i| Cand(1.0 - dot(q, &vectors[i * DIM..(i + 1) * DIM]), i as u32)).min().unwrap().1
    }

    /// Found by `fuzz/` (hnsw_load): a header field that sizes an allocation later, or overflows
    /// the length check, must make the dump refused, not the process abort.
    #[test]
    fn a_dump_with_a_huge_ef_construction_or_node_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        let data = random_unit(48, 5);
        Hnsw::build(&data, Params::default(), 1, &|_| {}).save(&path, 7).unwrap();
        let good = std::fs::read(&path).unwrap();
        // Header after the magic: m, ef_construction, seed, n, fingerprint, entry, top (u64 each).
        let patched = |field: usize, value: u64| {
            let mut b = good.clone();
            b[8 + field * 8..16 + field * 8].copy_from_slice(&value.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
            Hnsw::load(&path, &data, 7)
        };
        assert!(patched(1, 200).is_some(), "a sane ef_construction loads");
        assert!(patched(1, 1 << 40).is_none(), "ef_construction 2^40");
        assert!(patched(3, (1 << 57) + 48).is_none(), "a node count whose byte length overflows");
        assert!(patched(5, 1 << 33).is_none(), "an entry point beyond the nodes");
        assert!(patched(6, 1 << 20).is_none(), "a top layer beyond any level");
    }

    #[test]
    fn a_dump_with_a_bad_upper_layer_link_or_entry_point_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        let data = random_unit(400, 3);
        let h = Hnsw::build(&data, Params::default(), 1, &|_| {});
        h.save(&path, 42).unwrap();
        assert!(Hnsw::load(&path, &data, 42).is_some(), "an intact dump loads");
        let good = std::fs::read(&path).unwrap();
        let n = h.len();
        let header = 8 + 7 * 8;
        let upper_start = header + n + n * (h.m0 + 1) * 4;
        // The first node with an upper layer, and a node that has none.
        let (first_upper, _) = h.levels.iter().enumerate().find(|(_, l)| **l > 0).unwrap();
        let flat = h.levels.iter().position(|l| *l == 0).unwrap() as u32;
        let offset = upper_start + h.levels[..first_upper].iter().map(|&l| l as usize * (h.params.m + 1) * 4).sum::<usize>();
        let count = u32::from_le_bytes(good[offset..offset + 4].try_into().unwrap());
        assert!(count > 0, "the node has layer-1 links");
        let corrupt = |at: usize, value: u32| {
            let mut bytes = good.clone();
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            std::fs::write(&path, bytes).unwrap();
            Hnsw::load(&path, &data, 42)
        };
        assert!(corrupt(offset + 4, flat).is_none(), "a layer-1 link to a layer-0 node");
        assert!(corrupt(offset + 4, n as u32 + 7).is_none(), "a link past the last node");
        assert!(corrupt(offset, h.params.m as u32 + 1).is_none(), "a list longer than m");
        let ep_at = 8 + 5 * 8;
        assert!(corrupt(ep_at, flat).is_none(), "an entry point that is not on the top layer");
        assert!(corrupt(ep_at, n as u32 + 1).is_none(), "an entry point past the last node");
        std::fs::write(&path, &good).unwrap();
        assert!(Hnsw::load(&path, &data, 42).is_some());
    }

    #[test]
    fn finds_the_exact_nearest_neighbour_and_each_node_itself() {
        let data = random_unit(3000, 7);
        // One build thread: the graph (and so its recall) is the same on every run; the parallel
        // build, whose insert order varies, is exercised by the gallery tests.
        let h = Hnsw::build(&data, Params::default(), 1, &|_| {});
        assert_eq!(h.len(), 3000);
        for i in (0..3000).step_by(97) {
            let r = h.search(h.vector(i), 1, 32);
            assert_eq!(r[0].0, i, "node {i} finds itself");
        }
        let queries = random_unit(200, 99);
        let hits = (0..200).filter(|&j| h.search(&queries[j * DIM..(j + 1) * DIM], 1, 64)[0].0 == exact(&data, &queries[j * DIM..(j + 1) * DIM])).count();
        // Random 128-d vectors are the hardest case (no clusters); near-duplicates are easier.
        assert!(hits >= 180, "recall@1 {hits}/200 on random vectors");
    }


    #[test]
    fn inserts_are_searchable_at_once_and_dumps_reload_only_for_their_vectors() {
        let data = random_unit(600, 3);
        let mut h = Hnsw::build(&data[..500 * DIM], Params::default(), 1, &|_| {});
        for i in 500..600 {
            let node = h.insert(&data[i * DIM..(i + 1) * DIM]);
            assert_eq!(node as usize, i);
            assert_eq!(h.search(&data[i * DIM..(i + 1) * DIM], 1, 16)[0].0, node);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        let fp = fingerprint(&data);
        h.save(&path, fp).unwrap();
        let back = Hnsw::load(&path, &data, fp).expect("reloads");
        for i in (0..600).step_by(37) {
            let q = &data[i * DIM..(i + 1) * DIM];
            assert_eq!(back.search(q, 3, 32), h.search(q, 3, 32));
        }
        let other = random_unit(600, 4);
        assert!(Hnsw::load(&path, &other, fingerprint(&other)).is_none(), "a dump for other vectors is refused");
        assert!(Hnsw::load(&path, &data, fp ^ 1).is_none());
    }
}
