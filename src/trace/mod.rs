//! Recent decisions: a bounded in-memory store that the decisions API and the web page read.
