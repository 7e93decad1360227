//! What the `api_body` fuzz target checks, shared with brood-api's corpus
//! test (`crates/brood-api/tests/fuzz_corpus.rs`) so the corpus runs on
//! stable through exactly this code.
//!
//! The first byte picks one of the JSON request bodies broodd accepts; the
//! rest is parsed as that body the way broodd's extractor does
//! (`serde_json::from_slice`). Whatever a client sends, parsing returns a
//! body or an error and never panics, and a body that parses survives a
//! round trip: serialized and parsed again, it is the same body (what the
//! CLI sends is what broodd reads).

use std::fmt::Debug;

use brood_api::{
    DefineRequest, ExecRequest, ForkRequest, IdentityPoolCreateRequest, SetConfigRequest,
    SetStageRequest, StopRequest, TemplateCreateRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(body: &[u8]) {
    let Ok(parsed) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let text = serde_json::to_vec(&parsed).expect("a parsed body serializes");
    let again: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "{} does not parse back ({e}): {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(again, parsed, "{}", String::from_utf8_lossy(&text));
}

/// Parses `data[1..]` as the body `data[0]` picks; panics only if a wire
/// type misbehaves.
pub fn check(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => round_trip::<DefineRequest>(body),
        1 => round_trip::<ExecRequest>(body),
        2 => round_trip::<StopRequest>(body),
        3 => round_trip::<SetConfigRequest>(body),
        4 => round_trip::<SetStageRequest>(body),
        5 => round_trip::<TemplateCreateRequest>(body),
        6 => round_trip::<ForkRequest>(body),
        _ => round_trip::<IdentityPoolCreateRequest>(body),
    }
}
