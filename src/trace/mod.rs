//! Recent decisions: a bounded in-memory store that the decisions API and the web page read.
//!
//! [`TraceStore`] keeps the most recent decisions (oldest evicted first), each capped to
//! [`MAX_RECORD_BYTES`], scrubbed of credentials and kept in a compact form that
//! [`StoredDecision::decision`] rebuilds, and lists them newest first through a
//! [`DecisionFilter`].

mod cap;
mod store;

pub use cap::MAX_RECORD_BYTES;
pub use store::wire;
pub use store::{
    DEFAULT_CAPACITY, DEFAULT_LIST_LIMIT, DecisionFilter, MAX_LIST_LIMIT, StoredDecision,
    TraceStore,
};
