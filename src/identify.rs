//! The open-set decision for one embedding: the nearest person when within the threshold and
//! clearly nearer than the second-best person; otherwise unknown.

use crate::gallery::Match;

/// Returns ((person id, name) or None for unknown, distance of the nearest person).
pub fn decide(matches: &[Match], threshold: f32, margin: f32) -> (Option<(u64, String)>, Option<f32>) {
    let Some(best) = matches.first() else { return (None, None) };
    let second = matches.get(1).map(|m| m.distance).unwrap_or(f32::INFINITY);
    if best.distance <= threshold && second - best.distance >= margin {
        (Some((best.person_id, best.name.clone())), Some(best.distance))
    } else {
        (None, Some(best.distance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, d: f32) -> Match {
        Match { person_id: id, name: format!("p{id}"), distance: d }
    }

    #[test]
    fn open_set_rules() {
        assert_eq!(decide(&[m(1, 0.2), m(2, 0.6)], 0.4, 0.05).0.unwrap().0, 1);
        assert!(decide(&[m(1, 0.5)], 0.4, 0.05).0.is_none(), "beyond the threshold");
        assert!(decide(&[m(1, 0.30), m(2, 0.32)], 0.4, 0.05).0.is_none(), "ambiguous");
        assert_eq!(decide(&[], 0.4, 0.05), (None, None));
    }
}
