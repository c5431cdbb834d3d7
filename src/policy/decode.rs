//! Typed reading of the YAML tree: each helper reports what it expected at the node's place
//! and returns `None`, so that decoding goes on and every error of a file is found.

use super::err::{ErrorKind, Errors, closest};
use super::yaml::{Key, Node, NodeKind, Pos};

/// A mapping whose keys have been checked against the keys its place allows.
#[derive(Clone, Copy)]
pub(crate) struct MapView<'n> {
    pub pos: Pos,
    entries: &'n [(Key, Node)],
}

impl<'n> MapView<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(k, _)| k.pos)
    }

    /// The allowed keys present, in the order written.
    pub fn present<'k>(&self, keys: &[&'k str]) -> Vec<&'k str> {
        self.entries
            .iter()
            .filter_map(|(k, _)| keys.iter().find(|c| **c == k.text).copied())
            .collect()
    }
}

impl Errors<'_> {
    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.push(
            node.pos,
            ErrorKind::WrongType,
            format!("{what} must be {expected}, not {}", node.kind_name()),
            "",
        );
    }

    /// A mapping with only `allowed` keys; unknown keys are reported with the closest
    /// allowed key, so that a typo never silently drops a setting or a rule.
    pub fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<MapView<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        for (key, _) in entries {
            if !allowed.contains(&key.text.as_str()) {
                let help = match closest(&key.text, allowed) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!(
                        "the keys allowed here are {}",
                        allowed
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.push(
                    key.pos,
                    ErrorKind::UnknownKey,
                    format!("unknown key `{}` in {what}", key.text),
                    help,
                );
            }
        }
        Some(MapView {
            pos: node.pos,
            entries,
        })
    }

    pub fn required<'n>(
        &mut self,
        map: &MapView<'n>,
        key: &str,
        what: &str,
        help: &str,
    ) -> Option<&'n Node> {
        let found = map.get(key).filter(|n| !n.is_null());
        if found.is_none() {
            self.push(
                map.pos,
                ErrorKind::MissingKey,
                format!("{what} needs `{key}`"),
                help,
            );
        }
        found
    }

    /// A scalar's text; numbers and words are accepted as text, null is not.
    pub fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.kind {
            NodeKind::Scalar { text, .. } if !node.is_null() => Some(text),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.kind {
            NodeKind::Scalar {
                text,
                quoted: false,
            } => match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => {
                    self.wrong_type(node, what, "`true` or `false`");
                    None
                }
            },
            _ => {
                self.wrong_type(node, what, "`true` or `false`");
                None
            }
        }
    }

    pub fn seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, what, "a list");
                None
            }
        }
    }

    /// A non-empty list of distinct strings; a single string is taken as a list of one.
    pub fn strings<'n>(&mut self, node: &'n Node, what: &str) -> Option<Vec<(&'n str, Pos)>> {
        let items: &[Node] = match &node.kind {
            NodeKind::Seq(items) => items,
            NodeKind::Scalar { .. } if !node.is_null() => std::slice::from_ref(node),
            _ => {
                self.wrong_type(node, what, "a list of strings");
                return None;
            }
        };
        if items.is_empty() {
            self.push(
                node.pos,
                ErrorKind::InvalidValue,
                format!("{what} is empty"),
                "list at least one value",
            );
            return None;
        }
        let mut out: Vec<(&str, Pos)> = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.string(item, &format!("each entry of {what}")) {
                Some(s) if out.iter().any(|(seen, _)| *seen == s) => {
                    self.push(
                        item.pos,
                        ErrorKind::InvalidValue,
                        format!("`{s}` is listed twice in {what}"),
                        "remove the duplicate",
                    );
                    ok = false;
                }
                Some(s) => out.push((s, item.pos)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A duration such as `30s`, `5m` or `1h30m`, at most `max`.
    pub fn duration(
        &mut self,
        node: &Node,
        what: &str,
        max: std::time::Duration,
    ) -> Option<std::time::Duration> {
        let text = self.string(node, what)?;
        match humantime::parse_duration(text) {
            Ok(d) if d <= max => Some(d),
            Ok(_) => {
                self.push(
                    node.pos,
                    ErrorKind::InvalidValue,
                    format!(
                        "{what} `{text}` is longer than {}",
                        humantime::format_duration(max)
                    ),
                    "use a shorter duration",
                );
                None
            }
            Err(_) => {
                self.push(
                    node.pos,
                    ErrorKind::InvalidValue,
                    format!("{what} `{text}` is not a duration"),
                    "write a number and a unit, such as `30s`, `5m` or `1h`",
                );
                None
            }
        }
    }
}
