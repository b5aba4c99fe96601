//! The per-track vote that turns embedding matches into one identity decision, so that a single
//! lucky frame never names a person: a match votes for a person only when it is within the
//! threshold AND beats the second-best person by a margin; a person is named once they hold
//! `min_votes` votes and more than any other person.

use std::collections::HashMap;

use super::config::IdentifyConfig as VoteConfig;
use crate::gallery::Match;

/// A decision the vote reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// None = unknown.
    pub person: Option<(u64, String)>,
    /// For unknown: the nearest person seen and their distance (for tuning; never a name).
    pub nearest: Option<(u64, String, f32)>,
    pub distance: f32,
    pub votes: u32,
}

#[derive(Debug, Default)]
pub struct TrackVote {
    persons: HashMap<u64, (String, u32, f32)>,
    unknown: u32,
    pub decided: Option<Decision>,
    pub embeddings: u32,
    pub best_distance: Option<f32>,
    /// The nearest person over all embeddings so far.
    pub nearest: Option<(u64, String, f32)>,
}

impl TrackVote {
    /// Adds one embedding's nearest persons (nearest first); returns a decision when it changes.
    pub fn add(&mut self, matches: &[Match], threshold: f32, cfg: &VoteConfig) -> Option<Decision> {
        self.embeddings += 1;
        let best = matches.first();
        if let Some(b) = best {
            self.best_distance = Some(self.best_distance.map_or(b.distance, |d| d.min(b.distance)));
            if self.nearest.as_ref().is_none_or(|n| b.distance < n.2) {
                self.nearest = Some((b.person_id, b.name.clone(), b.distance));
            }
        }
        match crate::identify::decide(matches, threshold, cfg.margin) {
            (Some((id, name)), Some(distance)) => {
                let e = self.persons.entry(id).or_insert((name, 0, f32::INFINITY));
                e.1 += 1;
                e.2 = e.2.min(distance);
            }
            _ => self.unknown += 1,
        }
        // Leader among persons; ties are no decision.
        let mut ranked: Vec<(&u64, &(String, u32, f32))> = self.persons.iter().collect();
        ranked.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.1.2.total_cmp(&b.1.2)));
        if let Some((id, (name, votes, dist))) = ranked.first() {
            let runner_up = ranked.get(1).map(|r| r.1.1).unwrap_or(0);
            if *votes >= cfg.min_votes && *votes > runner_up {
                let decision = Decision { person: Some((**id, name.clone())), nearest: None, distance: *dist, votes: *votes };
                let changed = self.decided.as_ref().and_then(|d| d.person.as_ref()).map(|p| p.0) != Some(**id);
                if changed {
                    self.decided = Some(decision.clone());
                    return Some(decision);
                }
                return None;
            }
        }
        if self.decided.is_none() && self.unknown >= cfg.unknown_votes {
            let decision = Decision { person: None, nearest: self.nearest.clone(), distance: self.best_distance.unwrap_or(f32::INFINITY), votes: self.unknown };
            self.decided = Some(decision.clone());
            return Some(decision);
        }
        None
    }

    pub fn person(&self) -> Option<&(u64, String)> {
        self.decided.as_ref().and_then(|d| d.person.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, d: f32) -> Match {
        Match { person_id: id, name: format!("p{id}"), distance: d }
    }

    #[test]
    fn one_lucky_frame_never_names_a_person() {
        let cfg = VoteConfig::default();
        let mut v = TrackVote::default();
        assert_eq!(v.add(&[m(1, 0.3), m(2, 0.9)], 0.5, &cfg), None);
        let d = v.add(&[m(1, 0.35), m(2, 0.9)], 0.5, &cfg).unwrap();
        assert_eq!(d.person, Some((1, "p1".into())));
        assert_eq!(d.votes, 2);
        assert!((d.distance - 0.3).abs() < 1e-6);
        // Further agreeing votes do not repeat the decision.
        assert_eq!(v.add(&[m(1, 0.32)], 0.5, &cfg), None);
    }

    #[test]
    fn ambiguous_matches_do_not_vote() {
        let cfg = VoteConfig::default();
        let mut v = TrackVote::default();
        for _ in 0..2 {
            // Both persons are within the threshold and too close to each other.
            assert_eq!(v.add(&[m(1, 0.30), m(2, 0.32)], 0.5, &cfg), None);
        }
        let d = v.add(&[m(1, 0.30), m(2, 0.32)], 0.5, &cfg).unwrap();
        assert_eq!(d.person, None, "three ambiguous matches make the track unknown");
    }

    #[test]
    fn a_split_vote_is_no_decision_and_unknown_can_become_known() {
        let cfg = VoteConfig { unknown_votes: 1, ..VoteConfig::default() };
        let mut v = TrackVote::default();
        assert_eq!(v.add(&[m(9, 0.9)], 0.5, &cfg).unwrap().person, None);
        assert_eq!(v.add(&[m(1, 0.2), m(2, 0.9)], 0.5, &cfg), None, "one vote is not enough");
        assert_eq!(v.add(&[m(2, 0.2), m(1, 0.9)], 0.5, &cfg), None, "1 vs 1 tie: no decision");
        let d = v.add(&[m(2, 0.2), m(1, 0.9)], 0.5, &cfg).unwrap();
        assert_eq!(d.person.unwrap().0, 2, "unknown became known once a person led with enough votes");
    }
}
