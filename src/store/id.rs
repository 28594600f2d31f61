//! Object ids. A store object is named by the BLAKE3 hash of its bytes, printed `b3:<64 hex>`.
//! SHA-256 is kept beside it because Hugging Face, Civitai and PyPI publish SHA-256.

use crate::store::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    // One pass, lowercase only (the `hex` crate also takes uppercase, and validating first
    // read every digit twice: ids are parsed 25k at a time from manifests).
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// 32 bytes as 64 lowercase hex digits, into one allocation. `hex::encode` collects a `char`
/// iterator into a `String` (growing it): 12 % of a hard-link materialize's instructions went
/// there, through `Store::object_path` and `Display`.
fn hex32(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = vec![0u8; 64];
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    // Hex digits are ASCII: never the default.
    String::from_utf8(out).unwrap_or_default()
}

/// The BLAKE3 hash of an object's bytes: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Lowercase hex, without the `b3:` prefix.
    pub fn hex(&self) -> String {
        hex32(&self.0)
    }

    /// Parse 64 lowercase hex digits (no prefix).
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex32(s).map(ObjectId)
    }

    /// The id of the empty byte string (what every empty file hashes to).
    pub fn empty() -> Self {
        ObjectId(*blake3::hash(b"").as_bytes())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ObjectId {
    type Err = Error;
    /// Accepts `b3:<hex>` or bare hex.
    fn from_str(s: &str) -> Result<Self> {
        let hex = s.strip_prefix("b3:").unwrap_or(s);
        ObjectId::from_hex(hex).ok_or_else(|| Error::InvalidId(s.to_string()))
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    /// Parsed from the borrowed text, with no `String` per id: a 28k-entry manifest has 25k.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Id;
        impl serde::de::Visitor<'_> for Id {
            type Value = ObjectId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("b3:<64 lowercase hex>")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<ObjectId, E> {
                s.strip_prefix("b3:")
                    .and_then(ObjectId::from_hex)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "invalid object id {s:?}: expected b3:<64 lowercase hex>"
                        ))
                    })
            }
        }
        d.deserialize_str(Id)
    }
}

/// A SHA-256 digest, printed `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Lowercase hex, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex32(&self.0)
    }

    /// Parse 64 lowercase hex digits (no prefix).
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex32(s).map(Sha256)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a user may type to name an object: its BLAKE3 id or the SHA-256 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyId {
    B3(ObjectId),
    Sha256(Sha256),
}

impl FromStr for AnyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            return Sha256::from_hex(hex)
                .map(AnyId::Sha256)
                .ok_or_else(|| Error::InvalidId(s.to_string()));
        }
        s.parse().map(AnyId::B3)
    }
}

impl fmt::Display for AnyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyId::B3(id) => id.fmt(f),
            AnyId::Sha256(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex32_is_hex_encode() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8 ^ 0xa5);
        assert_eq!(super::hex32(&bytes), hex::encode(bytes));
        assert_eq!(super::hex32(&[0xff; 32]), "f".repeat(64));
    }

    use super::*;

    #[test]
    fn ids_round_trip_and_reject_bad_input() {
        let id = ObjectId::empty();
        let text = id.to_string();
        assert!(text.starts_with("b3:af1349b9"));
        assert_eq!(text.parse::<ObjectId>().unwrap(), id);
        assert_eq!(id.hex().parse::<ObjectId>().unwrap(), id);
        assert!("b3:abc".parse::<ObjectId>().is_err());
        assert!(text.to_uppercase().parse::<ObjectId>().is_err());
        assert!(matches!(
            format!("sha256:{}", "0".repeat(64)).parse::<AnyId>(),
            Ok(AnyId::Sha256(_))
        ));
        assert!("sha256:zz".parse::<AnyId>().is_err());
    }
}
