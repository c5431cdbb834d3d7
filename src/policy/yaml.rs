//! YAML (and JSON, which YAML 1.2 contains) read into a small tree that remembers the line
//! and column of every value, so that every policy error can point at its place.
//!
//! The tree is built from the parser's events without recursion, with limits on nesting and
//! on the nodes that aliases may expand to, so a hostile file cannot exhaust the stack or
//! memory.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting of sequences and mappings accepted.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a file may hold, aliases expanded.
pub const MAX_NODES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_marker(m: &Marker) -> Self {
        Pos {
            line: m.line() as u32,
            column: m.col() as u32 + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar as written; `quoted` scalars are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { text, quoted } => {
                if *quoted {
                    "a string"
                } else if is_null(text) {
                    "null"
                } else {
                    "a scalar"
                }
            }
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, quoted: false } if is_null(text))
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.count()).sum::<usize>(),
        }
    }
}

/// The tree as JSON, with plain scalars resolved as YAML 1.2's core schema does (null,
/// booleans, integers, floats, else strings); quoted scalars are always strings.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.kind {
        NodeKind::Scalar { text, quoted: true } => Value::String(text.clone()),
        NodeKind::Scalar {
            text,
            quoted: false,
        } => {
            if is_null(text) {
                Value::Null
            } else if let Some(b) = match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            } {
                Value::Bool(b)
            } else if let Ok(i) = text.parse::<i64>() {
                Value::from(i)
            } else if let Some(f) = text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && text.bytes().any(|b| b.is_ascii_digit()))
            {
                Value::from(f)
            } else {
                Value::String(text.clone())
            }
        }
        NodeKind::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        NodeKind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.text.clone(), to_json(v)))
                .collect(),
        ),
    }
}

pub fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// A problem that stops the reading of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    pub help: &'static str,
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

/// Reads every document of `text`.
///
/// Fails at the first syntax error, and on tags, non-scalar keys, duplicate keys, unknown
/// aliases, nesting beyond [`MAX_DEPTH`] or more than [`MAX_NODES`] nodes.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    loop {
        let (event, marker) = parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from_marker(e.marker()),
            message: format!("YAML syntax error: {}", e.info()),
            help: "check indentation, quoting and that `:` is followed by a space",
        })?;
        let pos = Pos::from_marker(&marker);
        let complete: Option<(Node, usize)> = match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing => None,
            Event::DocumentStart => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => None,
            Event::Scalar(text, style, anchor, tag) => {
                reject_tag(tag.is_some(), pos)?;
                let quoted = !matches!(style, TScalarStyle::Plain);
                Some((
                    Node {
                        pos,
                        kind: NodeKind::Scalar { text, quoted },
                    },
                    anchor,
                ))
            }
            Event::Alias(id) => {
                let node = anchors.get(&id).cloned().ok_or(SyntaxError {
                    pos,
                    message: "alias to an unknown anchor".into(),
                    help: "define the anchor (`&name`) before its alias (`*name`)",
                })?;
                nodes += node.count();
                Some((node, 0))
            }
            Event::SequenceStart(anchor, tag) => {
                reject_tag(tag.is_some(), pos)?;
                check_depth(stack.len(), pos)?;
                stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                reject_tag(tag.is_some(), pos)?;
                check_depth(stack.len(), pos)?;
                stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => Some((
                    Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    },
                    anchor,
                )),
                _ => return Err(internal(pos)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    key: None,
                }) => Some((
                    Node {
                        pos,
                        kind: NodeKind::Map(entries),
                    },
                    anchor,
                )),
                _ => return Err(internal(pos)),
            },
        };
        let Some((node, anchor)) = complete else {
            continue;
        };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(SyntaxError {
                pos,
                message: format!("the file expands to more than {MAX_NODES} values"),
                help: "split the policy, or use fewer nested aliases",
            });
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => documents.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let NodeKind::Scalar { text, .. } = node.kind else {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: "a mapping key must be a plain value".into(),
                            help: "use a string as the key",
                        });
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == text) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{text}` (first at line {})",
                                first.pos.line
                            ),
                            help: "a key may appear once per mapping; merge the two entries",
                        });
                    }
                    *key = Some(Key {
                        text,
                        pos: node.pos,
                    });
                }
                Some(k) => entries.push((k, node)),
            },
        }
    }
    // An empty document (a file of comments, a trailing `---`) holds no service.
    documents.retain(|d| !d.is_null());
    Ok(documents)
}

fn reject_tag(tagged: bool, pos: Pos) -> Result<(), SyntaxError> {
    if tagged {
        return Err(SyntaxError {
            pos,
            message: "YAML tags (`!something`) are not supported in policy files".into(),
            help: "remove the tag; quote the value if it must be a string",
        });
    }
    Ok(())
}

fn check_depth(depth: usize, pos: Pos) -> Result<(), SyntaxError> {
    if depth >= MAX_DEPTH {
        return Err(SyntaxError {
            pos,
            message: format!("values are nested more than {MAX_DEPTH} levels deep"),
            help: "flatten the structure",
        });
    }
    Ok(())
}

fn internal(pos: Pos) -> SyntaxError {
    SyntaxError {
        pos,
        message: "unbalanced YAML structure".into(),
        help: "check the file's indentation and brackets",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        match &n.kind {
            NodeKind::Scalar { text, .. } => text,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let docs = parse_documents("a: 1\nb:\n  - x\n  - 'y'\n").unwrap();
        let NodeKind::Map(entries) = &docs[0].kind else {
            panic!()
        };
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos { line: 4, column: 5 });
        assert_eq!(
            items[1].kind,
            NodeKind::Scalar {
                text: "y".into(),
                quoted: true
            }
        );
    }

    #[test]
    fn several_documents_and_json_are_read() {
        let docs = parse_documents("a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 2);
        let docs =
            parse_documents("{\n\t\"a\": [1, \"two\"],\n\t\"b\": {\"c\": null}\n}\n").unwrap();
        let NodeKind::Map(entries) = &docs[0].kind else {
            panic!()
        };
        assert_eq!(entries[0].0.text, "a");
        assert!(entries[1].1.kind_name() == "a mapping");
    }

    #[test]
    fn plain_scalars_resolve_and_quoted_stay_strings() {
        let docs = parse_documents("a: [1, '1', true, 'true', ~, 1.5, x, +3, .inf]\n").unwrap();
        assert_eq!(
            to_json(&docs[0]),
            serde_json::json!({"a": [1, "1", true, "true", null, 1.5, "x", 3, ".inf"]})
        );
    }

    #[test]
    fn aliases_expand_and_bombs_are_refused() {
        let docs = parse_documents("a: &x [1, 2]\nb: *x\n").unwrap();
        let NodeKind::Map(entries) = &docs[0].kind else {
            panic!()
        };
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(scalar(&items[1]), "2");
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&bomb).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }

    #[test]
    fn deep_nesting_duplicate_keys_and_tags_are_refused() {
        let deep = "[".repeat(100);
        assert!(
            parse_documents(&deep)
                .unwrap_err()
                .message
                .contains("nested")
        );
        // Far deeper input stops in the scanner, still as an error.
        assert!(parse_documents(&"[".repeat(100_000)).is_err());
        let err = parse_documents("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 1 });
        assert!(err.message.contains("duplicate key `a`"));
        assert!(
            parse_documents("a: !custom 1\n")
                .unwrap_err()
                .message
                .contains("tags")
        );
        let err = parse_documents("a: [1\n").unwrap_err();
        assert!(err.message.starts_with("YAML syntax error"));
    }
}
