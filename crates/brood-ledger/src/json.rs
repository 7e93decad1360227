//! `JsonText`: JSON the ledger stores for broodd without reading it (a
//! partition's configurations), kept as text. Reads hand the text over as
//! it is; the caller parses it straight into its own types. Parsing it into
//! a `serde_json::Value` on every read was most of the ledger readers' CPU
//! under broodd's API benchmark.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A JSON document held as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// The JSON of `value`.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::to_string(value)?.into()))
    }

    /// Text read back from the ledger (valid JSON: the column checks it).
    pub(crate) fn from_stored(text: String) -> Self {
        Self(text.into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The text as a JSON value (for audit records).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(v: serde_json::Value) -> Self {
        Self(v.to_string().into())
    }
}

impl Default for JsonText {
    fn default() -> Self {
        Self("{}".into())
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let j = JsonText::from_serialize(&serde_json::json!({"a": [1, 2]})).unwrap();
        assert_eq!(j.as_str(), r#"{"a":[1,2]}"#);
        assert_eq!(j.value(), serde_json::json!({"a": [1, 2]}));
        let m: std::collections::BTreeMap<String, Vec<u8>> = j.parse().unwrap();
        assert_eq!(m["a"], vec![1, 2]);
        let back: JsonText = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back, j);
    }
}
