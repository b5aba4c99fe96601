//! A constant-velocity Kalman filter on a box (centre x, centre y, width, height).
//!
//! The four coordinates move independently, so the 8-state filter splits into four 2-state
//! (position, velocity) filters; noise scales with the box height as in SORT/DeepSORT, so small and
//! large faces are followed with the same relative tolerance.

use crate::detect::BBox;

const STD_POS: f32 = 1.0 / 20.0;
const STD_VEL: f32 = 1.0 / 160.0;

#[derive(Clone, Debug)]
struct Axis {
    x: f32,
    v: f32,
    // Covariance [[p00, p01], [p01, p11]].
    p00: f32,
    p01: f32,
    p11: f32,
}

impl Axis {
    fn new(x: f32, pos_std: f32, vel_std: f32) -> Self {
        Self { x, v: 0.0, p00: pos_std * pos_std, p01: 0.0, p11: vel_std * vel_std }
    }

    fn predict(&mut self, q_pos: f32, q_vel: f32) {
        self.x += self.v;
        // P = F P F^T + Q with F = [[1, 1], [0, 1]].
        let p00 = self.p00 + 2.0 * self.p01 + self.p11 + q_pos;
        let p01 = self.p01 + self.p11;
        let p11 = self.p11 + q_vel;
        self.p00 = p00;
        self.p01 = p01;
        self.p11 = p11;
    }

    fn update(&mut self, z: f32, r: f32) {
        let s = self.p00 + r;
        let (k0, k1) = (self.p00 / s, self.p01 / s);
        let y = z - self.x;
        self.x += k0 * y;
        self.v += k1 * y;
        let (p00, p01, p11) = (self.p00, self.p01, self.p11);
        self.p00 = (1.0 - k0) * p00;
        self.p01 = (1.0 - k0) * p01;
        self.p11 = p11 - k1 * p01;
    }
}

/// The filter state of one track.
#[derive(Clone, Debug)]
pub struct BoxFilter {
    axes: [Axis; 4],
}

impl BoxFilter {
    pub fn new(b: &BBox) -> Self {
        let (cx, cy) = b.center();
        let h = b.height().max(1.0);
        let (ps, vs) = (2.0 * STD_POS * h, 10.0 * STD_VEL * h);
        Self { axes: [Axis::new(cx, ps, vs), Axis::new(cy, ps, vs), Axis::new(b.width(), ps, vs), Axis::new(h, ps, vs)] }
    }

    /// Advances the state by one frame.
    pub fn predict(&mut self) {
        let h = self.axes[3].x.max(1.0);
        let (qp, qv) = ((STD_POS * h).powi(2), (STD_VEL * h).powi(2));
        for a in &mut self.axes {
            a.predict(qp, qv);
        }
        // A shrinking box must never invert.
        self.axes[2].x = self.axes[2].x.max(1.0);
        self.axes[3].x = self.axes[3].x.max(1.0);
    }

    pub fn update(&mut self, b: &BBox) {
        let (cx, cy) = b.center();
        let r = (STD_POS * b.height().max(1.0)).powi(2);
        for (a, z) in self.axes.iter_mut().zip([cx, cy, b.width(), b.height()]) {
            a.update(z, r);
        }
    }

    pub fn bbox(&self) -> BBox {
        let [cx, cy, w, h] = [self.axes[0].x, self.axes[1].x, self.axes[2].x, self.axes[3].x];
        BBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 }
    }

    #[cfg(test)]
    pub fn velocity(&self) -> (f32, f32) {
        (self.axes[0].v, self.axes[1].v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_constant_velocity() {
        let mut f = BoxFilter::new(&BBox { x1: 0.0, y1: 0.0, x2: 40.0, y2: 40.0 });
        for t in 1..30 {
            f.predict();
            let x = 5.0 * t as f32;
            f.update(&BBox { x1: x, y1: 0.0, x2: x + 40.0, y2: 40.0 });
        }
        let (vx, vy) = f.velocity();
        assert!((vx - 5.0).abs() < 0.2, "vx {vx}");
        assert!(vy.abs() < 0.2, "vy {vy}");
        f.predict();
        let b = f.bbox();
        assert!((b.x1 - 150.0).abs() < 2.0, "{b:?}");
    }
}
