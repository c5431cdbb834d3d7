//! Recent decisions: a bounded in-memory store that the decisions API and the web page read.
//!
//! [`TraceStore`] keeps the most recent decisions (oldest evicted first), each capped to
//! [`MAX_RECORD_BYTES`], scrubbed of credentials and kept in a compact form that
//! [`StoredDecision::decision`] rebuilds, and lists them newest first through a
//! [`DecisionFilter`]. The ring is `store.rs`, the filters `filter.rs`, and the record with its
//! caps, packing and shared form `record/`.

mod filter;
#[cfg(test)]
pub(crate) mod fixtures;
mod record;
mod revisions;
mod store;

pub use filter::DecisionFilter;
pub use record::{MAX_RECORD_BYTES, StoredDecision, wire};
pub use revisions::HELD_REVISIONS;
pub use store::{DEFAULT_CAPACITY, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, TraceStore};
