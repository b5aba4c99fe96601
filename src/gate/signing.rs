//! Signed gate commands. A door must not open on a forged or a replayed message, so every
//! command (webhook body or MQTT payload, the same bytes) is an envelope
//!
//! ```json
//! {"v":1,"gate":"front-door","ts":1764633600,"nonce":"9f2c…(32 hex)","payload":"{\"command\":\"open\",…}","sig":"<hex>"}
//! ```
//!
//! with `sig = hex(HMAC-SHA256(key, "v1\n" + gate + "\n" + ts + "\n" + nonce + "\n" + payload))`.
//! A receiver accepts it only when (1) the signature matches (compared in constant time), (2) `ts`
//! is within `max_skew` seconds of its own clock, and (3) it has not seen `nonce` within the last
//! 2 × `max_skew` seconds (older nonces cannot come back: their `ts` fails check 2). `payload` is
//! a JSON string, signed as it stands, so nothing depends on how a JSON library orders keys.

use std::collections::{HashMap, VecDeque};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub gate: String,
    pub ts: i64,
    pub nonce: String,
    pub payload: String,
    pub sig: String,
}

/// Why a receiver refused a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not a signed gate command: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0}")]
    Version(u32),
    #[error("bad signature")]
    Signature,
    #[error("timestamp {ts} is {skew} s away from this receiver's clock (allowed {max})")]
    Stale { ts: i64, skew: u64, max: i64 },
    #[error("replayed nonce {0}")]
    Replay(String),
    #[error("for gate `{got}`, this receiver serves `{want}`")]
    WrongGate { got: String, want: String },
}

fn mac(key: &[u8], gate: &str, ts: i64, nonce: &str, payload: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(format!("v1\n{gate}\n{ts}\n{nonce}\n").as_bytes());
    m.update(payload.as_bytes());
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A fresh random nonce (16 bytes from the OS, hex).
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to time and a counter (still unique per process).
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    hex(&b)
}

/// Signs `payload` for `gate` at unix time `ts` with `nonce`.
pub fn sign(key: &[u8], gate: &str, ts: i64, nonce: String, payload: String) -> Envelope {
    let sig = hex(&mac(key, gate, ts, &nonce, &payload).finalize().into_bytes());
    Envelope { v: 1, gate: gate.to_string(), ts, nonce, payload, sig }
}

/// Nonces seen within the replay window, oldest first.
#[derive(Default)]
pub struct NonceCache {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl NonceCache {
    /// False when `nonce` was already seen; forgets nonces older than `now - window`.
    fn insert(&mut self, nonce: &str, now: i64, window: i64) -> bool {
        while let Some((t, _)) = self.order.front() {
            if *t >= now.saturating_sub(window) {
                break;
            }
            if let Some((_, n)) = self.order.pop_front() {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(nonce) {
            return false;
        }
        self.seen.insert(nonce.to_string(), now);
        self.order.push_back((now, nonce.to_string()));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The receiver's check (see the module documentation); the payload when the message is accepted.
pub struct Verifier {
    pub key: Vec<u8>,
    pub max_skew: i64,
    /// Accept only commands for this gate.
    pub gate: Option<String>,
    pub nonces: NonceCache,
}

impl Verifier {
    pub fn new(key: &[u8], max_skew: i64, gate: Option<String>) -> Self {
        Self { key: key.to_vec(), max_skew, gate, nonces: NonceCache::default() }
    }

    pub fn verify(&mut self, message: &[u8], now: i64) -> Result<Envelope, Rejection> {
        let env: Envelope = serde_json::from_slice(message).map_err(|e| Rejection::Malformed(e.to_string()))?;
        if env.v != 1 {
            return Err(Rejection::Version(env.v));
        }
        let sig = unhex(&env.sig).ok_or(Rejection::Signature)?;
        mac(&self.key, &env.gate, env.ts, &env.nonce, &env.payload).verify_slice(&sig).map_err(|_| Rejection::Signature)?;
        // abs_diff: no overflow whatever `ts` a sender puts in (a wrapped difference would pass).
        let skew = now.abs_diff(env.ts);
        if skew > self.max_skew.max(0) as u64 {
            return Err(Rejection::Stale { ts: env.ts, skew, max: self.max_skew });
        }
        if let Some(want) = &self.gate
            && *want != env.gate {
                return Err(Rejection::WrongGate { got: env.gate.clone(), want: want.clone() });
            }
        if !self.nonces.insert(&env.nonce, now, self.max_skew.saturating_mul(2)) {
            return Err(Rejection::Replay(env.nonce.clone()));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-test-key";

    fn signed(ts: i64) -> Vec<u8> {
        serde_json::to_vec(&sign(KEY, "door", ts, nonce(), r#"{"command":"open"}"#.into())).unwrap()
    }

    #[test]
    fn a_signed_command_is_accepted_once() {
        let mut v = Verifier::new(KEY, 30, Some("door".into()));
        let msg = signed(1000);
        let env = v.verify(&msg, 1005).unwrap();
        assert_eq!(env.payload, r#"{"command":"open"}"#);
        assert!(matches!(v.verify(&msg, 1006), Err(Rejection::Replay(_))), "the same message again");
    }

    #[test]
    fn forged_stale_and_foreign_commands_are_refused() {
        let mut v = Verifier::new(KEY, 30, Some("door".into()));
        let mut env: Envelope = serde_json::from_slice(&signed(1000)).unwrap();
        env.payload = r#"{"command":"open","person":"mallory"}"#.into();
        assert_eq!(v.verify(&serde_json::to_vec(&env).unwrap(), 1000), Err(Rejection::Signature));
        assert!(matches!(v.verify(&signed(900), 1000), Err(Rejection::Stale { skew: 100, .. })));
        let other = Verifier::new(b"another-key-of-16+", 30, None).verify(&signed(1000), 1000);
        assert_eq!(other, Err(Rejection::Signature));
        let foreign = serde_json::to_vec(&sign(KEY, "garage", 1000, nonce(), "{}".into())).unwrap();
        assert!(matches!(v.verify(&foreign, 1000), Err(Rejection::WrongGate { .. })));
        assert!(matches!(v.verify(b"open", 1000), Err(Rejection::Malformed(_))));
    }

    /// Found while writing `fuzz/` (json_bodies): a correctly signed envelope with an absurd
    /// timestamp overflowed `now - ts` (and in release wrapped to a "fresh" skew).
    #[test]
    fn an_absurd_timestamp_is_stale_not_an_overflow() {
        let mut v = Verifier::new(KEY, 30, None);
        for ts in [1_764_633_600i64.wrapping_sub(i64::MIN), i64::MIN, i64::MAX] {
            let msg = serde_json::to_vec(&sign(KEY, "door", ts, nonce(), "{}".into())).unwrap();
            assert!(matches!(v.verify(&msg, 1_764_633_600), Err(Rejection::Stale { .. })), "{ts}");
        }
    }

    #[test]
    fn old_nonces_are_forgotten_after_the_window() {
        let mut v = Verifier::new(KEY, 30, None);
        for t in 0..200 {
            v.verify(&signed(t), t).unwrap();
        }
        assert!(v.nonces.len() <= 61, "{}", v.nonces.len());
    }
}
