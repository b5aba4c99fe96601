//! Gallery search benchmark on synthetic identities: clustered 128-d unit vectors (several noisy
//! samples around each identity's centre, seeded), queried with fresh noisy samples. Reports build
//! time, memory, search p50/p99 and recall@1 for the exact scan and for HNSW at several ef values,
//! through the same `Gallery::search` the pipeline uses.

use std::time::Instant;

use serde::Serialize;

use super::Gallery;
use crate::embed::{DIM, normalized};

/// Per-dimension noise of a sample around its identity centre (unit-normalised afterwards); gives
/// same-identity distances around 0.5-0.6 and different identities near 1.4, like real faces.
const NOISE: f32 = 0.05;

#[derive(Clone, Debug, Serialize)]
pub struct GalleryBench {
    pub identities: usize,
    pub samples: usize,
    pub method: String,
    pub build_s: f64,
    pub memory_mb: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub qps: f64,
    /// Nearest person is the query's identity.
    pub recall_at_1: f64,
    /// Nearest person equals the exact scan's answer.
    pub agrees_with_exact: f64,
}

/// xorshift64* with Box-Muller: deterministic for a seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.next_f32(), self.next_f32());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_f32() * n as f32) as usize % n
    }
}

fn noisy(centre: &[f32], rng: &mut Rng) -> Vec<f32> {
    normalized(&centre.iter().map(|c| c + NOISE * rng.gauss()).collect::<Vec<_>>())
}

fn rss_mb() -> f64 {
    crate::telemetry::proc_status_mb("VmRSS:")
}

fn measure(g: &Gallery, queries: &[(usize, Vec<f32>)], exact_answers: Option<&[u64]>) -> (f64, f64, f64, f64, f64, Vec<u64>) {
    let mut times = Vec::with_capacity(queries.len());
    let mut hits = 0usize;
    let mut agree = 0usize;
    let mut answers = Vec::with_capacity(queries.len());
    let started = Instant::now();
    for (i, (identity, q)) in queries.iter().enumerate() {
        let t = Instant::now();
        let m = g.search(q, 1);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        let got = m.first().map(|m| m.person_id).unwrap_or(0);
        // Person ids are given as identity + 1.
        hits += (got == *identity as u64 + 1) as usize;
        if let Some(e) = exact_answers {
            agree += (e[i] == got) as usize;
        }
        answers.push(got);
    }
    let total = started.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let n = queries.len() as f64;
    (pct(0.5), pct(0.99), n / total, hits as f64 / n, if exact_answers.is_some() { agree as f64 / n } else { 1.0 }, answers)
}

/// Runs the benchmark for each size; `log` receives progress lines.
pub fn run(sizes: &[usize], samples: usize, efs: &[usize], methods: &[&str], queries: usize, seed: u64, mut log: impl FnMut(String)) -> Vec<GalleryBench> {
    let mut out = Vec::new();
    for &n in sizes {
        let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15 ^ n as u64);
        let centres: Vec<Vec<f32>> = (0..n).map(|_| normalized(&(0..DIM).map(|_| rng.gauss()).collect::<Vec<_>>())).collect();
        let qs: Vec<(usize, Vec<f32>)> = (0..queries)
            .map(|_| {
                let id = rng.below(n);
                (id, noisy(&centres[id], &mut rng))
            })
            .collect();
        let before = rss_mb();
        let started = Instant::now();
        let mut g = Gallery::new();
        g.crossover = usize::MAX;
        g.begin_bulk();
        for (id, c) in centres.iter().enumerate() {
            for _ in 0..samples.max(1) {
                g.add_with_id(id as u64 + 1, &format!("id{id}"), noisy(c, &mut rng)).expect("dimension");
            }
        }
        let build = started.elapsed().as_secs_f64();
        let mem = rss_mb() - before;
        drop(centres);
        // The exact scan streams every sample per query: at large sizes a subset of the queries
        // measures it, and only those are compared with the index.
        let n_exact = if n * samples.max(1) > 300_000 { qs.len().min(200) } else { qs.len() };
        let (p50, p99, qps, recall, _, exact) = measure(&g, &qs[..n_exact], None);
        log(format!("{n} identities x {samples}: exact scan p50 {p50:.0} us, p99 {p99:.0} us, recall@1 {recall:.4} ({n_exact} queries)"));
        let row = |method: String, build_s: f64, memory_mb: f64, (p50_us, p99_us, qps, recall_at_1): (f64, f64, f64, f64), agrees_with_exact: f64| GalleryBench {
            identities: n,
            samples,
            method,
            build_s,
            memory_mb,
            p50_us,
            p99_us,
            qps,
            recall_at_1,
            agrees_with_exact,
        };
        out.push(row("exact".into(), build, mem, (p50, p99, qps, recall), 1.0));
        for &method in methods {
            let started = Instant::now();
            g.crossover = 1;
            g.index_kind = if method == "sketch" { super::IndexKind::Sketch } else { super::IndexKind::Hnsw };
            g.rebuild_index();
            let build = started.elapsed().as_secs_f64();
            let mem = g.index_memory_bytes() as f64 / (1024.0 * 1024.0);
            log(format!("{n} identities x {samples}: {method} index built in {build:.1} s, {mem:.0} MB"));
            for &ef in efs {
                g.ef_search = Some(ef);
                let (p50, p99, qps, recall, _, _) = measure(&g, &qs, None);
                let (_, _, _, _, agree, _) = measure(&g, &qs[..n_exact], Some(&exact));
                log(format!("  {method} ef {ef}: p50 {p50:.0} us, p99 {p99:.0} us, recall@1 {recall:.4}, agrees with exact {agree:.4}"));
                out.push(row(format!("{method} ef={ef}"), build, mem, (p50, p99, qps, recall), agree));
            }
        }
    }
    out
}

pub fn table(rows: &[GalleryBench]) -> String {
    let mut s = String::from("identities  samples  method        build s   mem MB   p50 us   p99 us      QPS  recall@1  =exact\n");
    for r in rows {
        s.push_str(&format!(
            "{:>10}  {:>7}  {:<12} {:>8.1} {:>8.0} {:>8.0} {:>8.0} {:>8.0}  {:>8.4}  {:>6.4}\n",
            r.identities, r.samples, r.method, r.build_s, r.memory_mb, r.p50_us, r.p99_us, r.qps, r.recall_at_1, r.agrees_with_exact
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_is_deterministic_and_accurate() {
        let a = run(&[300], 2, &[32], &["hnsw", "sketch"], 50, 7, |_| {});
        let b = run(&[300], 2, &[32], &["hnsw", "sketch"], 50, 7, |_| {});
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].recall_at_1, b[0].recall_at_1);
        assert!(a[0].recall_at_1 > 0.99, "{:?}", a[0]);
        assert!(a[1].agrees_with_exact > 0.95, "{:?}", a[1]);
        assert!(a[2].agrees_with_exact > 0.95, "{:?}", a[2]);
    }
}
