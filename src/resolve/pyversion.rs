//! Galaxy's version ordering, reproduced exactly.
//!
//! Galaxy sorts cached images with `galaxy.tool_util.version.parse_version`: a string that is a
//! valid PEP 440 version becomes `packaging.version.Version` (packaging 26.x), anything else a
//! `LegacyVersion` (the setuptools scheme that packaging 21.3 had, kept in Galaxy). Every
//! `LegacyVersion` sorts before every `Version`. The pieces of Python this depends on — `str.isspace`,
//! `\d` (Unicode decimal digits), `int()` of arbitrary size — are reproduced here too, for Python
//! 3.11 (Unicode 14). Lower-casing of non-ASCII text uses Rust's tables, which may differ from
//! Python 3.11's for characters added after Unicode 14.

use std::cmp::Ordering;

/// First code point of each run of ten Unicode decimal digits (`\d` in a Python 3.11 `str` regex,
/// general category Nd, Unicode 14.0): digit value = code point - start.
const ND_STARTS: [u32; 66] = [
    0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66,
    0xde6, 0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90,
    0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10,
    0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650,
    0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50,
    0x1d7ce, 0x1d7d8, 0x1d7e2, 0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
];

/// The value of `c` if Python's `\d` matches it (any Unicode decimal digit).
pub fn py_digit(c: char) -> Option<u32> {
    let c = c as u32;
    let i = ND_STARTS.partition_point(|&s| s <= c);
    let start = *ND_STARTS.get(i.checked_sub(1)?)?;
    (c - start < 10).then_some(c - start)
}

/// Python's `str.isspace()` (= `\s` in a `str` regex): Rust's White_Space plus U+001C..U+001F.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// A non-negative integer of any size, as Python's `int` holds it; compares numerically.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Num(String);

impl Num {
    /// Zero.
    pub fn zero() -> Num {
        Num("0".into())
    }

    /// `int(s)` for a string of (Unicode) decimal digits; `None` if any character is not one.
    pub fn parse(s: &str) -> Option<Num> {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            let d = py_digit(c)?;
            if !(out.is_empty() && d == 0) {
                out.push(char::from_digit(d, 10)?);
            }
        }
        if s.is_empty() {
            return None;
        }
        if out.is_empty() {
            out.push('0');
        }
        Some(Num(out))
    }

    fn is_zero(&self) -> bool {
        self.0 == "0"
    }
}

impl Ord for Num {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One segment of a PEP 440 local version: strings sort before numbers (`(-1, s)` vs `(n, "")`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LocalSeg {
    /// A segment with a letter, lower-cased.
    Str(String),
    /// An all-digit segment.
    Int(Num),
}

/// packaging's `_cmpkey`: `(epoch, release without trailing zeros, suffix, local)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pep440Key {
    epoch: Num,
    release: Vec<Num>,
    /// `(pre_rank, pre_n, post_rank, post_n, dev_rank, dev_n)`; pre_rank -1 dev-only, 0 a, 1 b,
    /// 2 rc, 3 none.
    suffix: (i8, Num, u8, Num, u8, Num),
    /// `None` sorts before any local segment (packaging's 3-tuple < 4-tuple).
    local: Option<Vec<LocalSeg>>,
}

/// What `galaxy.tool_util.version.parse_version` returns, ordered as Python orders it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PyVersion {
    /// `LegacyVersion`: key `(-1, parts)`; sorts before every PEP 440 version.
    Legacy(Vec<String>),
    /// `packaging.version.Version`.
    Pep440(Pep440Key),
}

/// `galaxy.tool_util.version.parse_version(s)`.
pub fn parse_version(s: &str) -> PyVersion {
    match parse_pep440(s) {
        Some(k) => PyVersion::Pep440(k),
        None => PyVersion::Legacy(legacy_key(s)),
    }
}

fn is_sep(b: Option<&u8>) -> bool {
    matches!(b, Some(b'.' | b'_' | b'-'))
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn alnum_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
        i += 1;
    }
    i
}

/// The first of `alts` (in regex alternation order) that `b` starts with.
fn match_alt(b: &[u8], alts: &[&'static str]) -> Option<&'static str> {
    alts.iter().copied().find(|a| b.starts_with(a.as_bytes()))
}

fn num(b: &[u8]) -> Num {
    // Only ever called on non-empty ASCII digit runs.
    Num::parse(std::str::from_utf8(b).unwrap_or("0")).unwrap_or_else(Num::zero)
}

/// `packaging.version.Version(s)`: `None` where it raises `InvalidVersion`.
///
/// A hand-written recogniser for packaging's `VERSION_PATTERN` (fullmatch, `re.VERBOSE |
/// re.IGNORECASE`, surrounded by `\s*`). Each optional part is taken greedily and never given
/// back: that is what the possessive quantifiers of packaging 26 on Python >= 3.11.5 do, and for
/// this grammar the older backtracking pattern accepts the same strings with the same groups.
pub fn parse_pep440(s: &str) -> Option<Pep440Key> {
    // Fast path of packaging 26: only digits and dots (including the empty string).
    if s.bytes().all(|b| b == b'.' || b.is_ascii_digit()) {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let release = parts.iter().map(|p| num(p.as_bytes())).collect();
        return Some(cmpkey(Num::zero(), release, None, None, None, None));
    }
    let t = s.trim_matches(py_is_space);
    if !t.is_ascii() {
        return None;
    }
    let b = t.to_ascii_lowercase().into_bytes();
    let b = b.as_slice();
    let mut i = 0;
    if b.first() == Some(&b'v') {
        i = 1;
    }
    let mut epoch = Num::zero();
    let j = digits_end(b, i);
    if j > i && b.get(j) == Some(&b'!') {
        epoch = num(&b[i..j]);
        i = j + 1;
    }
    let j = digits_end(b, i);
    if j == i {
        return None;
    }
    let mut release = vec![num(&b[i..j])];
    i = j;
    while b.get(i) == Some(&b'.') {
        let j = digits_end(b, i + 1);
        if j == i + 1 {
            break;
        }
        release.push(num(&b[i + 1..j]));
        i = j;
    }
    // Pre-release.
    let mut pre = None;
    let mut k = i + usize::from(is_sep(b.get(i)));
    let pre_alts = ["alpha", "a", "beta", "b", "preview", "pre", "c", "rc"];
    if let Some(l) = match_alt(&b[k.min(b.len())..], &pre_alts) {
        k += l.len();
        k += usize::from(is_sep(b.get(k)));
        let j = digits_end(b, k);
        let n = if j > k { num(&b[k..j]) } else { Num::zero() };
        let rank = match l {
            "alpha" | "a" => 0,
            "beta" | "b" => 1,
            _ => 2,
        };
        pre = Some((rank, n));
        i = j;
    }
    // Post-release: `-N`, or `[._-]?(post|rev|r)[._-]?N?`.
    let mut post = None;
    let j = digits_end(b, i + 1);
    if b.get(i) == Some(&b'-') && j > i + 1 {
        post = Some(num(&b[i + 1..j]));
        i = j;
    } else {
        let mut k = i + usize::from(is_sep(b.get(i)));
        if let Some(l) = match_alt(&b[k.min(b.len())..], &["post", "rev", "r"]) {
            k += l.len();
            k += usize::from(is_sep(b.get(k)));
            let j = digits_end(b, k);
            post = Some(if j > k { num(&b[k..j]) } else { Num::zero() });
            i = j;
        }
    }
    // Development release.
    let mut dev = None;
    let mut k = i + usize::from(is_sep(b.get(i)));
    if b[k.min(b.len())..].starts_with(b"dev") {
        k += 3;
        k += usize::from(is_sep(b.get(k)));
        let j = digits_end(b, k);
        dev = Some(if j > k { num(&b[k..j]) } else { Num::zero() });
        i = j;
    }
    // Local version.
    let mut local = None;
    if b.get(i) == Some(&b'+') {
        let j = alnum_end(b, i + 1);
        if j > i + 1 {
            let mut parts = vec![&b[i + 1..j]];
            let mut k = j;
            while is_sep(b.get(k)) {
                let j = alnum_end(b, k + 1);
                if j == k + 1 {
                    break;
                }
                parts.push(&b[k + 1..j]);
                k = j;
            }
            i = k;
            local = Some(
                parts
                    .into_iter()
                    .map(|p| {
                        if p.iter().all(u8::is_ascii_digit) {
                            LocalSeg::Int(num(p))
                        } else {
                            LocalSeg::Str(String::from_utf8_lossy(p).into_owned())
                        }
                    })
                    .collect(),
            );
        }
    }
    if i != b.len() {
        return None;
    }
    Some(cmpkey(epoch, release, pre, post, dev, local))
}

fn cmpkey(
    epoch: Num,
    mut release: Vec<Num>,
    pre: Option<(i8, Num)>,
    post: Option<Num>,
    dev: Option<Num>,
    local: Option<Vec<LocalSeg>>,
) -> Pep440Key {
    while release.last().is_some_and(Num::is_zero) {
        release.pop();
    }
    let (pre_rank, pre_n) = match (&pre, &post, &dev) {
        (None, None, Some(_)) => (-1, Num::zero()),
        (None, _, _) => (3, Num::zero()),
        (Some((r, n)), _, _) => (*r, n.clone()),
    };
    let (post_rank, post_n) = match post {
        None => (0, Num::zero()),
        Some(n) => (1, n),
    };
    let (dev_rank, dev_n) = match dev {
        None => (1, Num::zero()),
        Some(n) => (0, n),
    };
    Pep440Key {
        epoch,
        release,
        suffix: (pre_rank, pre_n, post_rank, post_n, dev_rank, dev_n),
        local,
    }
}

/// Galaxy's `_legacy_cmpkey(s)[1]`: the setuptools-era parts, e.g. `1.0b2` ->
/// `["00000001", "*b", "00000002", "*final"]`.
pub fn legacy_key(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    let mut parts: Vec<String> = Vec::new();
    for raw in legacy_split(&lower) {
        let part = match raw {
            "pre" | "preview" | "rc" => "c",
            "-" => "final-",
            "dev" => "@",
            p => p,
        };
        if part.is_empty() || part == "." {
            continue;
        }
        let part = if part.starts_with(|c: char| c.is_ascii_digit()) {
            let n = part.chars().count();
            format!("{}{}", "0".repeat(8usize.saturating_sub(n)), part)
        } else {
            format!("*{part}")
        };
        push_legacy(&mut parts, part);
    }
    push_legacy(&mut parts, "*final".into());
    parts
}

fn push_legacy(parts: &mut Vec<String>, part: String) {
    if part.starts_with('*') {
        if part.as_str() < "*final" {
            while parts.last().is_some_and(|p| p == "*final-") {
                parts.pop();
            }
        }
        while parts.last().is_some_and(|p| p == "00000000") {
            parts.pop();
        }
    }
    parts.push(part);
}

/// `re.split(r"(\d+|[a-z]+|\.|-)", s)`: unmatched chunks and matched tokens, in order.
fn legacy_split(s: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum K {
        Digit,
        Alpha,
        Dot,
        Dash,
        Other,
    }
    let kind = |c: char| {
        if py_digit(c).is_some() {
            K::Digit
        } else if c.is_ascii_lowercase() {
            K::Alpha
        } else if c == '.' {
            K::Dot
        } else if c == '-' {
            K::Dash
        } else {
            K::Other
        }
    };
    let mut out = Vec::new();
    let mut chunk_start = 0;
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let k = kind(c);
        if k == K::Other {
            continue;
        }
        out.push(&s[chunk_start..i]);
        let mut end = i + c.len_utf8();
        if matches!(k, K::Digit | K::Alpha) {
            while let Some(&(j, d)) = it.peek() {
                if kind(d) != k {
                    break;
                }
                end = j + d.len_utf8();
                it.next();
            }
        }
        out.push(&s[i..end]);
        chunk_start = end;
    }
    out.push(&s[chunk_start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_spaces() {
        assert_eq!(py_digit('7'), Some(7));
        assert_eq!(py_digit('\u{0663}'), Some(3));
        assert_eq!(py_digit('a'), None);
        assert_eq!(py_digit('\u{2460}'), None); // circled one: No, not Nd
        assert!(py_is_space('\u{1f}') && py_is_space(' ') && !py_is_space('_'));
        assert!(Num::parse("0010").unwrap() < Num::parse("9999999999999999999999").unwrap());
        assert_eq!(Num::parse("000").unwrap(), Num::zero());
    }

    #[test]
    fn legacy_keys_match_galaxy() {
        // Values printed by galaxy.tool_util.version._legacy_cmpkey (galaxy-tool-util 26.1.2).
        assert_eq!(legacy_key("-1"), ["*final-", "00000001", "*final"]);
        assert_eq!(legacy_key("latest"), ["*latest", "*final"]);
        assert_eq!(
            legacy_key("h91753b0_8"),
            ["*h", "00091753", "*b", "*_", "00000008", "*final"]
        );
        assert_eq!(
            legacy_key("4.0_06Jun17"),
            ["00000004", "*_", "00000006", "*jun", "00000017", "*final"]
        );
        assert_eq!(
            legacy_key("1.0-rc1"),
            ["00000001", "*c", "00000001", "*final"]
        );
        assert_eq!(legacy_key(""), ["*final"]);
    }

    #[test]
    fn pep440_and_legacy_order_match_galaxy() {
        // sorted(xs, key=galaxy.tool_util.version.parse_version) with packaging 26.3.
        let xs = [
            "1.0",
            "1.0.0",
            "v1.0",
            " 1.0 ",
            "1!0.1",
            "1.0.post1",
            "1.0-1",
            "1.0.dev1",
            "1.0a1",
            "1.0rc1",
            "1.0c1",
            "1.0+local.1",
            "1.0+local.a",
            "1.0+1",
            "1.0a1.dev1",
            "1.0.post1.dev1",
            "2019.1",
            "20190101000000000000000001",
            "1.0.dev.",
            "1..0",
            "",
            "latest",
            "1.0_beta",
            "abc",
            "1.0-rc1",
            "1.0preview2",
            "0.0",
            "V2.0.POST3",
            ".1",
            "1.0+",
        ];
        let legacy = ["1..0", "", "latest", "abc", ".1", "1.0+"];
        for x in xs {
            let is_legacy = matches!(parse_version(x), PyVersion::Legacy(_));
            assert_eq!(is_legacy, legacy.contains(&x), "{x:?}");
        }
        let galaxy = [
            "abc",
            "",
            "latest",
            "1.0+",
            "1..0",
            ".1",
            "0.0",
            "1.0.dev.",
            "1.0.dev1",
            "1.0a1.dev1",
            "1.0a1",
            "1.0_beta",
            "1.0rc1",
            "1.0c1",
            "1.0-rc1",
            "1.0preview2",
            "1.0",
            "1.0.0",
            "v1.0",
            " 1.0 ",
            "1.0+local.a",
            "1.0+local.1",
            "1.0+1",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.0-1",
            "V2.0.POST3",
            "2019.1",
            "20190101000000000000000001",
            "1!0.1",
        ];
        let mut sorted = xs.to_vec();
        sorted.sort_by_key(|x| parse_version(x)); // stable, like Python's sorted()
        assert_eq!(sorted, galaxy);
        assert_eq!(parse_version("1.0.post1"), parse_version("1.0-1"));
        assert_eq!(parse_version("1..0"), parse_version(".1"));
    }
}
