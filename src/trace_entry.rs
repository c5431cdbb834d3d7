//! The trace vocabulary: one evaluated check (its step, what it compared with what, and the
//! result). The rules and the pipeline write it; the store, the APIs and the suites read it.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which stage of the pipeline a trace entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    BaseUrl,
    Token,
    Operation,
    Rule,
}

/// One evaluated check: what was compared, with what, and the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceEntry {
    pub step: Step,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    pub attribute: Arc<str>,
    pub operator: Cow<'static, str>,
    pub expected: Option<Arc<Value>>,
    pub actual: Option<Value>,
    pub result: bool,
    pub decisive: bool,
    /// Nesting under `any`/`all`/`not`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `file:line` of the rule or operation in the policy files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Arc<str>>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// The pipeline steps' attribute names (`url`, `authorization`, …), one `Arc` per name and
/// thread, so that a decision's entries share them instead of each allocating its name (and
/// no count is shared between threads).
fn step_attribute(name: &'static str) -> Arc<str> {
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<(&'static str, Arc<str>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    NAMES.with_borrow_mut(|names| {
        if let Some((_, shared)) = names.iter().find(|(n, _)| *n == name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = name.into();
        names.push((name, Arc::clone(&shared)));
        shared
    })
}

impl TraceEntry {
    /// An entry of `step` with no rule, values or detail; it decides when it fails.
    pub(crate) fn step(
        step: Step,
        attribute: &'static str,
        operator: &'static str,
        result: bool,
    ) -> Self {
        Self::step_of(step, step_attribute(attribute), operator, result)
    }

    /// [`step`](Self::step) with an attribute name made for this entry.
    pub(crate) fn step_of(
        step: Step,
        attribute: Arc<str>,
        operator: &'static str,
        result: bool,
    ) -> Self {
        Self {
            step,
            rule: None,
            attribute,
            operator: Cow::Borrowed(operator),
            expected: None,
            actual: None,
            result,
            decisive: !result,
            depth: 0,
            detail: None,
            location: None,
        }
    }
}
