//! Optimal assignment (Hungarian / Kuhn-Munkres, O(n^3)) on a rectangular cost matrix.

/// Returns `assignment[row] = Some(col)` minimising the total cost; pairs whose cost exceeds
/// `max_cost` are left unassigned.
pub fn assign(cost: &[Vec<f32>], max_cost: f32) -> Vec<Option<usize>> {
    let rows = cost.len();
    if rows == 0 {
        return Vec::new();
    }
    let cols = cost[0].len();
    if cols == 0 {
        return vec![None; rows];
    }
    // Square the matrix; padding cells cost more than any admissible pair.
    let n = rows.max(cols);
    let big = max_cost.max(1.0) * 10.0 + 1.0;
    let c = |i: usize, j: usize| -> f64 {
        if i < rows && j < cols { cost[i][j].min(big) as f64 } else { big as f64 }
    };
    // Potentials-based Hungarian algorithm, 1-indexed as in the classic formulation.
    let inf = f64::INFINITY;
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = c(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; rows];
    for j in 1..=n {
        let i = p[j];
        if i >= 1 && i <= rows && j <= cols && cost[i - 1][j - 1] <= max_cost {
            out[i - 1] = Some(j - 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_global_optimum_not_the_greedy_one() {
        // Greedy would take (0,0)=0.1 and then (1,1)=0.9; optimal is (0,1)+(1,0)=0.4.
        let cost = vec![vec![0.1, 0.2], vec![0.2, 0.9]];
        assert_eq!(assign(&cost, 1.0), vec![Some(1), Some(0)]);
    }

    #[test]
    fn rectangular_and_gated() {
        let cost = vec![vec![0.5, 0.05, 0.9]];
        assert_eq!(assign(&cost, 1.0), vec![Some(1)]);
        let cost = vec![vec![0.95], vec![0.1], vec![0.5]];
        assert_eq!(assign(&cost, 0.8), vec![None, Some(0), None]);
    }

    #[test]
    fn empty_inputs() {
        assert!(assign(&[], 1.0).is_empty());
        assert_eq!(assign(&[vec![], vec![]], 1.0), vec![None, None]);
    }
}
