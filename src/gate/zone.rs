//! A gate's zone: a polygon in normalised image coordinates.

/// Whether (x, y) lies inside the polygon (even-odd rule; points on an edge may fall either way).
pub fn contains(poly: &[[f32; 2]], x: f32, y: f32) -> bool {
    let mut inside = false;
    let n = poly.len();
    for i in 0..n {
        let [xi, yi] = poly[i];
        let [xj, yj] = poly[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_in_and_out_of_a_concave_zone() {
        // An L shape: the top-right quarter is cut out.
        let l = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]];
        assert!(contains(&l, 0.25, 0.25));
        assert!(contains(&l, 0.75, 0.75));
        assert!(!contains(&l, 0.75, 0.25), "the cut-out corner");
        assert!(!contains(&l, 1.5, 0.75));
    }
}
