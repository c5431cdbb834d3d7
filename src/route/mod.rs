//! Matching a request to an API service (longest base URL) and to an operation (most specific
//! path template). Both are segment tries, so the cost follows the depth of the path, not the
//! number of services or operations. No I/O.

pub mod url;

use std::collections::HashMap;

use compact_str::CompactString;

use self::url::{NormalizedPath, RequestUrl, Scheme};

/// One segment of a compiled path template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplateSegment {
    Literal(Box<str>),
    /// `{name}`: exactly one segment.
    Param(Box<str>),
    /// `**`: any rest, including nothing; only last.
    Rest,
}

/// Where a service's base URL lives, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: Box<str>,
    pub port: u16,
}

/// Path segments are short: keeping them inline in the table saves a cache miss per trie
/// level, which is what matching costs once the policy set outgrows the CPU caches.
type SegmentMap<V> = HashMap<CompactString, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct PrefixNode {
    children: SegmentMap<PrefixNode>,
    /// (service, which of its base URLs)
    service: Option<(usize, usize)>,
}

/// Base URL → service index: a hash on the origin, then a trie of path segments.
#[derive(Debug, Default)]
pub struct BaseUrlIndex {
    origins: SegmentMap<Vec<(Scheme, u16, PrefixNode)>>,
}

/// A base-URL match: the service and the number of path segments its base URL consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseMatch {
    pub service: usize,
    /// Which of the service's base URLs matched.
    pub base_url: usize,
    pub consumed: usize,
}

impl BaseUrlIndex {
    /// Registers a base URL; returns the service already registered there, if any.
    pub fn insert(
        &mut self,
        origin: &Origin,
        path: &NormalizedPath,
        service: usize,
        base_url: usize,
    ) -> Option<usize> {
        let per_host = self
            .origins
            .entry(CompactString::from(&*origin.host))
            .or_default();
        let idx = match per_host
            .iter()
            .position(|(s, p, _)| *s == origin.scheme && *p == origin.port)
        {
            Some(i) => i,
            None => {
                per_host.push((origin.scheme, origin.port, PrefixNode::default()));
                per_host.len() - 1
            }
        };
        let mut node = &mut per_host[idx].2;
        for segment in path.segments() {
            node = node.children.entry(segment.into()).or_default();
        }
        match node.service {
            Some((existing, _)) => Some(existing),
            None => {
                node.service = Some((service, base_url));
                None
            }
        }
    }

    /// The service whose base URL is the longest segment-boundary prefix of `url`.
    pub fn lookup(&self, url: &RequestUrl<'_>) -> Option<BaseMatch> {
        let per_host = self.origins.get(url.host.as_ref())?;
        let (_, _, root) = per_host
            .iter()
            .find(|(s, p, _)| *s == url.scheme && *p == url.port)?;
        let mut best = root.service.map(|(service, base_url)| BaseMatch {
            service,
            base_url,
            consumed: 0,
        });
        let mut node = root;
        for (i, segment) in url.path.segments().enumerate() {
            match node.children.get(segment) {
                Some(child) => node = child,
                None => break,
            }
            if let Some((service, base_url)) = node.service {
                best = Some(BaseMatch {
                    service,
                    base_url,
                    consumed: i + 1,
                });
            }
        }
        best
    }
}

/// One way an operation can be reached: a method on a template.
#[derive(Debug, Clone)]
struct Route {
    method: Box<str>,
    operation: usize,
    /// Which of the operation's paths this template is.
    path: usize,
    /// Parameter names in the order their segments appear.
    params: Box<[Box<str>]>,
}

#[derive(Debug, Default)]
struct OpNode {
    literals: SegmentMap<OpNode>,
    param: Option<Box<OpNode>>,
    /// Routes of templates ending here.
    exact: Vec<Route>,
    /// Routes of templates ending in `**` here.
    rest: Vec<Route>,
}

/// Operation templates of one service.
#[derive(Debug, Default)]
pub struct OperationIndex {
    root: OpNode,
}

/// The operation chosen for a request, with its path parameters (decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationMatch {
    pub operation: usize,
    /// Index of the matching template among the operation's paths.
    pub path: usize,
    pub params: Vec<(Box<str>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationLookup {
    Found(OperationMatch),
    /// Some template matches the path, but none for this method; the methods that would.
    MethodNotAllowed(Vec<Box<str>>),
    NoMatch,
}

impl OperationIndex {
    /// Adds a method on a template; returns the operation that already owns that exact
    /// method and template shape (parameter names aside), which would make one unreachable.
    pub fn insert(
        &mut self,
        template: &[TemplateSegment],
        method: &str,
        operation: usize,
        path: usize,
    ) -> Option<usize> {
        let mut node = &mut self.root;
        let mut params = Vec::new();
        let mut ends_in_rest = false;
        for segment in template {
            match segment {
                TemplateSegment::Literal(s) => {
                    node = node.literals.entry(CompactString::from(&**s)).or_default()
                }
                TemplateSegment::Param(name) => {
                    params.push(name.clone());
                    node = node.param.get_or_insert_with(Default::default);
                }
                TemplateSegment::Rest => ends_in_rest = true,
            }
        }
        let routes = if ends_in_rest {
            &mut node.rest
        } else {
            &mut node.exact
        };
        if let Some(existing) = routes.iter().find(|r| &*r.method == method) {
            return Some(existing.operation);
        }
        routes.push(Route {
            method: method.into(),
            operation,
            path,
            params: params.into(),
        });
        None
    }

    /// Finds the most specific template matching `path[skip..]` that has `method`.
    ///
    /// Specificity goes segment by segment from the left: a literal beats `{param}`, which
    /// beats `**`. A less specific template is used when the more specific ones lack the
    /// method.
    pub fn lookup(&self, method: &str, path: &NormalizedPath, skip: usize) -> OperationLookup {
        let mut allowed: Vec<Box<str>> = Vec::new();
        let mut captured: Vec<usize> = Vec::new();
        match search(&self.root, method, path, skip, &mut captured, &mut allowed) {
            Some((route, captured)) => {
                let params = route
                    .params
                    .iter()
                    .zip(captured)
                    .map(|(name, i)| (name.clone(), path.segment(i).to_owned()))
                    .collect();
                OperationLookup::Found(OperationMatch {
                    operation: route.operation,
                    path: route.path,
                    params,
                })
            }
            None if allowed.is_empty() => OperationLookup::NoMatch,
            None => {
                allowed.sort();
                allowed.dedup();
                OperationLookup::MethodNotAllowed(allowed)
            }
        }
    }
}

fn search<'a>(
    node: &'a OpNode,
    method: &str,
    path: &NormalizedPath,
    at: usize,
    captured: &mut Vec<usize>,
    allowed: &mut Vec<Box<str>>,
) -> Option<(&'a Route, Vec<usize>)> {
    if at == path.len() {
        if let Some(found) = pick(&node.exact, method, captured, allowed) {
            return Some(found);
        }
    } else {
        if let Some(child) = node.literals.get(path.segment(at))
            && let Some(found) = search(child, method, path, at + 1, captured, allowed)
        {
            return Some(found);
        }
        if let Some(child) = &node.param {
            captured.push(at);
            if let Some(found) = search(child, method, path, at + 1, captured, allowed) {
                return Some(found);
            }
            captured.pop();
        }
    }
    pick(&node.rest, method, captured, allowed)
}

fn pick<'a>(
    routes: &'a [Route],
    method: &str,
    captured: &[usize],
    allowed: &mut Vec<Box<str>>,
) -> Option<(&'a Route, Vec<usize>)> {
    match routes.iter().find(|r| &*r.method == method) {
        Some(route) => Some((route, captured.to_vec())),
        None => {
            allowed.extend(routes.iter().map(|r| r.method.clone()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url::{normalize_path, parse_request_url};
    use super::*;

    fn template(t: &str) -> Vec<TemplateSegment> {
        t.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s == "**" {
                    TemplateSegment::Rest
                } else if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    TemplateSegment::Param(name.into())
                } else {
                    TemplateSegment::Literal(s.into())
                }
            })
            .collect()
    }

    fn origin(url: &str) -> (Origin, NormalizedPath) {
        let u = parse_request_url(url).unwrap();
        (
            Origin {
                scheme: u.scheme,
                host: u.host.as_ref().into(),
                port: u.port,
            },
            u.path,
        )
    }

    #[test]
    fn longest_base_url_wins_at_segment_boundaries() {
        let mut index = BaseUrlIndex::default();
        let (o, p) = origin("https://h/api/v2");
        index.insert(&o, &p, 0, 0);
        let (o, p) = origin("https://h/api/v2/admin");
        index.insert(&o, &p, 1, 0);
        let lookup = |u: &str| index.lookup(&parse_request_url(u).unwrap());
        assert_eq!(lookup("https://h/api/v2/admin/x").unwrap().service, 1);
        assert_eq!(
            lookup("https://h/api/v2/administrators").unwrap().service,
            0
        );
        assert_eq!(lookup("https://h/api/v2").unwrap().consumed, 2);
        assert_eq!(lookup("https://h/api/v20"), None);
        assert_eq!(lookup("http://h/api/v2/x"), None);
        assert_eq!(lookup("https://h:8443/api/v2/x"), None);
        assert_eq!(lookup("https://H:443/api/v2/x").unwrap().service, 0);
    }

    #[test]
    fn duplicate_base_url_is_reported() {
        let mut index = BaseUrlIndex::default();
        let (o, p) = origin("https://h/api");
        assert_eq!(index.insert(&o, &p, 0, 0), None);
        let (o, p) = origin("https://H:443/api/");
        assert_eq!(index.insert(&o, &p, 3, 0), Some(0));
    }

    #[test]
    fn specific_templates_win_and_methods_fall_through() {
        let mut ops = OperationIndex::default();
        ops.insert(&template("/users/{id}/answers"), "GET", 0, 0);
        ops.insert(&template("/users/me/answers"), "GET", 1, 0);
        ops.insert(&template("/users/**"), "DELETE", 2, 0);
        ops.insert(&template("/users/{id}/answers"), "POST", 3, 0);
        let lookup = |m: &str, p: &str| ops.lookup(m, &normalize_path(p).unwrap(), 0);
        let found = |m: &str, p: &str| match lookup(m, p) {
            OperationLookup::Found(f) => f,
            other => panic!("{m} {p}: {other:?}"),
        };
        assert_eq!(found("GET", "/users/me/answers").operation, 1);
        let m = found("GET", "/users/u1/answers");
        assert_eq!(m.operation, 0);
        assert_eq!(m.params, vec![("id".into(), "u1".to_owned())]);
        assert_eq!(found("DELETE", "/users/u1/answers").operation, 2);
        assert_eq!(found("DELETE", "/users").operation, 2);
        assert_eq!(
            lookup("PUT", "/users/u1/answers"),
            OperationLookup::MethodNotAllowed(vec!["DELETE".into(), "GET".into(), "POST".into()])
        );
        assert_eq!(lookup("GET", "/other"), OperationLookup::NoMatch);
    }

    #[test]
    fn same_method_and_shape_conflicts() {
        let mut ops = OperationIndex::default();
        assert_eq!(ops.insert(&template("/a/{x}"), "GET", 0, 0), None);
        assert_eq!(ops.insert(&template("/a/{y}"), "GET", 1, 0), Some(0));
        assert_eq!(ops.insert(&template("/a/{y}"), "POST", 1, 0), None);
    }
}
