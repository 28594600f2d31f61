//! Digests written as bare 64 hex (the form `sha256sum`, `b3sum` and the hubs print), for the
//! file formats that record them that way: lockfiles, pins files, environment metadata.
//! Use with `#[serde(with = "crate::store::hex64")]` (or `hex64::opt` for an `Option`).

use super::{ObjectId, Sha256};
use serde::{Deserialize, Deserializer, Serializer};

/// A digest that can be written as bare hex.
pub trait Hex64: Sized {
    const WHAT: &'static str;
    fn to_hex(&self) -> String;
    fn parse_hex(s: &str) -> Option<Self>;
}

impl Hex64 for Sha256 {
    const WHAT: &'static str = "sha256";
    fn to_hex(&self) -> String {
        self.hex()
    }
    fn parse_hex(s: &str) -> Option<Self> {
        Sha256::from_hex(s)
    }
}

impl Hex64 for ObjectId {
    const WHAT: &'static str = "blake3";
    fn to_hex(&self) -> String {
        self.hex()
    }
    fn parse_hex(s: &str) -> Option<Self> {
        ObjectId::from_hex(s)
    }
}

/// Write a digest as bare hex.
pub fn serialize<T: Hex64, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_hex())
}
pub fn deserialize<'de, T: Hex64, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    T::parse_hex(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid {} {s:?}: expected 64 lowercase hex digits",
            T::WHAT
        ))
    })
}

/// The same for optional digests.
pub mod opt {
    use serde::{Deserializer, Serializer};

    pub fn serialize<T: super::Hex64, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::serialize(v, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, T: super::Hex64, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        super::deserialize(d).map(Some)
    }
}
