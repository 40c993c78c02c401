//! What a sync will do: the listing against the catalog's directory, filtered, with the
//! mass-deletion guard. Pure functions.

use std::collections::{HashMap, HashSet};

use super::listing::Upstream;
use crate::db::{Node, NodeKind};

/// Which names take part (`--include`, `--exclude`, `--from-list`). A name is in when it
/// matches an include (or there is none), is in the list (if given), and matches no exclude.
/// Names outside the filter are neither fetched nor removed.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// `--include` globs.
    pub include: Vec<String>,
    /// `--exclude` globs.
    pub exclude: Vec<String>,
    /// `--from-list` names.
    pub only: Option<HashSet<String>>,
}

impl Filter {
    /// Is `name` in?
    pub fn matches(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| glob(g, name)))
            && self.only.as_ref().is_none_or(|o| o.contains(name))
            && !self.exclude.iter().any(|g| glob(g, name))
    }
}

/// Shell-style match of a whole name: `*` (any run), `?` (one character), `[abc]`, `[a-z]`,
/// `[!x]`; `\` escapes the next character.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*` (linear enough for names).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => Some(pi + 1),
                '[' => class(&p, pi, n[ni]),
                '\\' if pi + 1 < p.len() => (p[pi + 1] == n[ni]).then_some(pi + 2),
                c => (c == n[ni]).then_some(pi + 1),
            }
        } else {
            None
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Match `c` against the class starting at `p[at] == '['`; the index after it if it matches.
fn class(p: &[char], at: usize, c: char) -> Option<usize> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() && (p[i] != ']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hit |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        // No closing bracket: a literal '['.
        return (c == '[').then_some(at + 1);
    }
    (hit != negate).then_some(i + 1)
}

/// Why a listed file is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Not in the repository.
    New,
    /// In the repository with another size or date (or not as a file).
    Changed,
}

/// The plan of one sync.
#[derive(Debug, Default)]
pub struct Plan {
    /// Files to fetch, in listing order.
    pub fetch: Vec<(Upstream, Why)>,
    /// Files already up to date (same size and date, staged or published).
    pub unchanged: u64,
    /// Names in the repository directory (within the filter) that the listing lacks.
    pub gone: Vec<String>,
    /// Names of the repository directory within the filter.
    pub have: u64,
    /// Listed files outside the filter.
    pub filtered: u64,
}

impl Plan {
    /// Files and estimated bytes to fetch of one kind.
    pub fn count(&self, why: Why) -> (u64, u64) {
        self.fetch
            .iter()
            .filter(|(_, w)| *w == why)
            .fold((0, 0), |(n, b), (u, _)| (n + 1, b + u.size.estimate()))
    }

    /// Share of the repository's names the listing lost, in percent.
    pub fn lost_percent(&self) -> f64 {
        if self.have == 0 {
            0.0
        } else {
            self.gone.len() as f64 * 100.0 / self.have as f64
        }
    }
}

/// Most of the repository's names a listing may lose before `--delete` needs `--force`.
pub const MAX_LOST_PERCENT: f64 = 5.0;

/// Is `node` the upstream file as listed? A regular file of the listed size (when the
/// listing gives it exactly) whose mtime, at the listing's precision, is the listed date.
pub fn up_to_date(node: &Node, up: &Upstream) -> bool {
    let NodeKind::File { size, .. } = node.kind else {
        return false;
    };
    let secs = node.mtime_ns.div_euclid(1_000_000_000);
    up.size.exact().is_none_or(|s| s == size)
        && secs - secs.rem_euclid(up.precision_s) == up.mtime_s
}

/// Compare `listing` with the repository directory's `children` (name order or any).
pub fn plan(listing: &[Upstream], children: &[(String, Node)], filter: &Filter) -> Plan {
    let have: HashMap<&str, &Node> = children
        .iter()
        .filter(|(n, _)| filter.matches(n))
        .map(|(n, node)| (n.as_str(), node))
        .collect();
    let mut p = Plan {
        have: have.len() as u64,
        ..Plan::default()
    };
    let mut listed = HashSet::with_capacity(listing.len());
    for up in listing {
        if !filter.matches(&up.name) {
            p.filtered += 1;
            continue;
        }
        listed.insert(up.name.as_str());
        match have.get(up.name.as_str()) {
            None => p.fetch.push((up.clone(), Why::New)),
            Some(node) if up_to_date(node, up) => p.unchanged += 1,
            Some(_) => p.fetch.push((up.clone(), Why::Changed)),
        }
    }
    p.gone = children
        .iter()
        .map(|(n, _)| n)
        .filter(|n| have.contains_key(n.as_str()) && !listed.contains(n.as_str()))
        .cloned()
        .collect();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::listing::Size;
    use depotfs_catalog::FileContent;

    fn up(name: &str, size: Size, mtime_s: i64, precision_s: i64) -> Upstream {
        Upstream {
            name: name.into(),
            size,
            mtime_s,
            precision_s,
        }
    }

    fn file(size: u64, mtime_s: i64) -> Node {
        Node {
            mode: 0o644,
            mtime_ns: mtime_s * 1_000_000_000 + 123,
            kind: NodeKind::File {
                size,
                content: FileContent::Empty,
            },
        }
    }

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("samtools:*", "samtools:1.9--0", true),
            ("samtools:*", "xsamtools:1", false),
            ("*--h*_?", "a:1--h91753b0_8", true),
            ("*--h*_?", "a:1--h91753b0_18", false),
            ("mulled-v2-[0-9a-f]*", "mulled-v2-0015", true),
            ("mulled-v2-[!0-9]*", "mulled-v2-0015", false),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("[", "[", true),
            ("*", "", true),
            ("**a**b", "xxaxxbyyb", true),
            ("?", "ü", true),
        ] {
            assert_eq!(glob(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn the_plan_fetches_new_and_changed_and_finds_gone() {
        let children = vec![
            ("same".to_string(), file(10, 1000)),
            ("same-minute".to_string(), file(10, 1260 + 59)),
            ("resized".to_string(), file(10, 1000)),
            ("redated".to_string(), file(10, 1000)),
            ("about".to_string(), file(10, 1000)),
            (
                "was-dir".to_string(),
                Node {
                    mode: 0o755,
                    mtime_ns: 0,
                    kind: NodeKind::Dir,
                },
            ),
            ("gone".to_string(), file(1, 1)),
            ("excluded-gone".to_string(), file(1, 1)),
        ];
        let listing = vec![
            up("same", Size::Exact(10), 1000, 1),
            up("same-minute", Size::Exact(10), 1260, 60),
            up("resized", Size::Exact(11), 1000, 1),
            up("redated", Size::Exact(10), 1001, 1),
            up("about", Size::About(1024), 1000, 1),
            up("was-dir", Size::Exact(1), 0, 1),
            up("new", Size::Exact(5), 0, 1),
            up("excluded-new", Size::Exact(5), 0, 1),
        ];
        let filter = Filter {
            exclude: vec!["excluded-*".into()],
            ..Filter::default()
        };
        let p = plan(&listing, &children, &filter);
        let fetched: Vec<(&str, Why)> =
            p.fetch.iter().map(|(u, w)| (u.name.as_str(), *w)).collect();
        assert_eq!(
            fetched,
            vec![
                ("resized", Why::Changed),
                ("redated", Why::Changed),
                ("was-dir", Why::Changed),
                ("new", Why::New),
            ]
        );
        assert_eq!(p.unchanged, 3);
        assert_eq!(p.gone, vec!["gone"]);
        assert_eq!((p.have, p.filtered), (7, 1));
        assert_eq!(p.count(Why::New), (1, 5));
        // An empty listing loses everything.
        let p = plan(&[], &children, &filter);
        assert_eq!(p.lost_percent(), 100.0);
        let only = Filter {
            only: Some(["same".to_string()].into()),
            ..Filter::default()
        };
        let p = plan(&listing, &children, &only);
        assert_eq!(
            (p.unchanged, p.fetch.len(), p.filtered, p.have),
            (1, 0, 7, 1)
        );
    }
}
