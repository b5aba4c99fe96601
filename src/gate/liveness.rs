//! The motion half of liveness: a printed photo or a screen held up to the camera is a plane, so
//! its five landmarks move together under one affine map (whatever way it is waved), and a still
//! image played as a video does not move at all. A head turns in 3-D: the nose moves against the
//! eyes and the mouth corners move when it speaks, which no affine map of the first frame explains.
//!
//! Score of a track: for every frame, fit the affine map from the track's first landmarks to this
//! frame's by least squares and take the RMS residual over the five points, divided by the eye
//! distance; the score is the 80th percentile over the frames (robust to one bad detection).

/// Affine residual (RMS, relative to the eye distance of `b`) of mapping landmarks `a` onto `b`.
pub fn affine_residual(a: &[[f32; 2]; 5], b: &[[f32; 2]; 5]) -> f32 {
    // Solve for [x' y'] = [x y 1] * M (3x2) by the normal equations, in f64.
    let mut ata = [[0f64; 3]; 3];
    let mut atb = [[0f64; 2]; 3];
    for (p, q) in a.iter().zip(b) {
        let row = [p[0] as f64, p[1] as f64, 1.0];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += row[i] * row[j];
            }
            atb[i][0] += row[i] * q[0] as f64;
            atb[i][1] += row[i] * q[1] as f64;
        }
    }
    let Some(inv) = invert3(&ata) else { return 0.0 };
    let mut m = [[0f64; 2]; 3];
    for i in 0..3 {
        for k in 0..2 {
            m[i][k] = (0..3).map(|j| inv[i][j] * atb[j][k]).sum();
        }
    }
    let mut sq = 0f64;
    for (p, q) in a.iter().zip(b) {
        let x = p[0] as f64 * m[0][0] + p[1] as f64 * m[1][0] + m[2][0];
        let y = p[0] as f64 * m[0][1] + p[1] as f64 * m[1][1] + m[2][1];
        sq += (x - q[0] as f64).powi(2) + (y - q[1] as f64).powi(2);
    }
    let eyes = ((b[0][0] - b[1][0]).powi(2) + (b[0][1] - b[1][1]).powi(2)).sqrt().max(1.0) as f64;
    ((sq / 5.0).sqrt() / eyes) as f32
}

fn invert3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-9 {
        return None;
    }
    let c = |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let adj = [
        [c(1, 1, 2, 2), -c(0, 1, 2, 2), c(0, 1, 1, 2)],
        [-c(1, 0, 2, 2), c(0, 0, 2, 2), -c(0, 0, 1, 2)],
        [c(1, 0, 2, 1), -c(0, 0, 2, 1), c(0, 0, 1, 1)],
    ];
    let mut out = [[0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = adj[i][j] / det;
        }
    }
    Some(out)
}

/// The motion score of a track's landmarks (oldest first); `None` with fewer than 3 frames.
pub fn motion_score(frames: &[[[f32; 2]; 5]]) -> Option<f32> {
    if frames.len() < 3 {
        return None;
    }
    let first = &frames[0];
    let mut r: Vec<f32> = frames[1..].iter().map(|f| affine_residual(first, f)).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    Some(r[((r.len() - 1) as f32 * 0.8).round() as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACE: [[f32; 2]; 5] = [[40.0, 50.0], [80.0, 50.0], [60.0, 70.0], [45.0, 90.0], [75.0, 90.0]];

    fn affine(f: &[[f32; 2]; 5], a: f32, b: f32, c: f32, d: f32, tx: f32, ty: f32) -> [[f32; 2]; 5] {
        f.map(|[x, y]| [a * x + b * y + tx, c * x + d * y + ty])
    }

    #[test]
    fn a_plane_moved_any_way_has_no_residual() {
        let frames: Vec<_> = (0..10).map(|i| affine(&FACE, 1.0 + 0.02 * i as f32, 0.05, -0.03 * i as f32, 0.9, 3.0 * i as f32, -2.0)).collect();
        assert!(motion_score(&frames).unwrap() < 1e-4, "{:?}", motion_score(&frames));
        let still = vec![FACE; 10];
        assert!(motion_score(&still).unwrap() < 1e-6);
    }

    #[test]
    fn a_turning_head_moves_the_nose_against_the_eyes() {
        // Yaw: the nose tip (nearer the camera) shifts more than the eyes and mouth corners.
        let frames: Vec<_> = (0..10)
            .map(|i| {
                let mut f = FACE;
                f[2][0] += 1.5 * i as f32;
                f
            })
            .collect();
        let s = motion_score(&frames).unwrap();
        assert!(s > 0.05, "{s}");
    }

    #[test]
    fn too_few_frames_give_no_score() {
        assert_eq!(motion_score(&[FACE, FACE]), None);
    }
}
