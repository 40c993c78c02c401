//! Galaxy's `cached_mulled_singularity` container resolver, reproduced exactly
//! (galaxy-tool-util 26.1.2: `deps/container_resolvers/mulled.py`, `deps/mulled/util.py`,
//! `deps/mulled/mulled_build.py`, `deps/conda_util.py`).
//!
//! The path from tool requirements to an image file:
//!
//! 1. [`targets`]: requirements become Galaxy's `CondaTarget`s the way
//!    `requirements_to_mulled_targets` does it — by joining them into `name=version,...`,
//!    splitting that on `,`, then each on the first `=`, the version on `=` or `--` into version
//!    and build; package names are lower-cased, names with white space or quotes are rejected.
//! 2. One target: the cached entries named exactly like the package (names in the directory are
//!    *not* lower-cased), newest first by [`TagKey`]; the first whose version equals the target's
//!    (any version when the target has none) wins. The build never takes part.
//! 3. Several targets: [`v2_image_name`] gives `mulled-v2-<names sha1>[:<versions sha1>]`; the
//!    first entry, newest first, with that image name and that version hash wins (when no target
//!    has a version, any entry with that image name).
//!
//! Galaxy sorts the whole listing per image name with three stable sorts; entries whose keys are
//! equal keep directory (readdir) order, and so do they here.
//!
//! Known differences, none reachable with the real listing: entry names that are not UTF-8 are
//! skipped (Python would keep them with surrogate escapes); lower-casing uses Rust's Unicode
//! tables (Python 3.11 has Unicode 14); a missing directory is an error here where Galaxy
//! silently resolves nothing.

use std::cmp::Ordering;

use sha1::{Digest, Sha1};

use super::pyversion::{Num, PyVersion, parse_version, py_digit, py_is_space};

/// A tool requirement of type `package` (Galaxy's `ToolRequirement`), as given on the command
/// line: `name` or `name=version` (split at the first `=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Package name, as written (Galaxy lower-cases it later).
    pub name: String,
    /// Version, if any; an empty version counts as none.
    pub version: Option<String>,
}

impl Requirement {
    /// Parse `name` or `name=version`.
    pub fn parse(s: &str) -> Requirement {
        match s.split_once('=') {
            Some((n, v)) => Requirement {
                name: n.into(),
                version: Some(v.into()),
            },
            None => Requirement {
                name: s.into(),
                version: None,
            },
        }
    }
}

/// Galaxy's `CondaTarget`: what a requirement becomes before image lookup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Lower-cased package name.
    pub package: String,
    /// Version; may be `Some("")`, which Galaxy treats as no version except in
    /// single-target image names.
    pub version: Option<String>,
    /// Conda build, from `name=version=build` or `name=version--build`; never used for lookup.
    pub build: Option<String>,
}

impl Target {
    /// The version if Python would find it truthy (set and non-empty).
    pub fn version_set(&self) -> Option<&str> {
        self.version.as_deref().filter(|v| !v.is_empty())
    }
}

/// Why requirements cannot become targets; Galaxy raises `ValueError` for each of these.
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Empty package name, or one with white space or quotes.
    Package(String),
    /// Version with white space or quotes.
    Version(String),
    /// Build with white space or quotes.
    Build(String),
    /// More than one `=` or `--` in the version part.
    VersionBuild(String),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Package(p) => write!(
                f,
                "invalid package name {p:?} (empty, or contains white space or quotes)"
            ),
            TargetError::Version(v) => {
                write!(f, "invalid version {v:?} (contains white space or quotes)")
            }
            TargetError::Build(b) => {
                write!(f, "invalid build {b:?} (contains white space or quotes)")
            }
            TargetError::VersionBuild(v) => write!(
                f,
                "cannot split {v:?} into version and build (more than one '=' or '--')"
            ),
        }
    }
}

impl std::error::Error for TargetError {}

fn shell_unsafe(s: &str) -> bool {
    s.chars().any(|c| py_is_space(c) || c == '"' || c == '\'')
}

/// `build_target` / `CondaTarget.__init__`.
fn build_target(
    package: &str,
    version: Option<&str>,
    build: Option<&str>,
) -> Result<Target, TargetError> {
    if package.is_empty() || shell_unsafe(package) {
        return Err(TargetError::Package(package.into()));
    }
    if let Some(v) = version.filter(|v| !v.is_empty() && shell_unsafe(v)) {
        return Err(TargetError::Version(v.into()));
    }
    if let Some(b) = build.filter(|b| shell_unsafe(b)) {
        return Err(TargetError::Build(b.into()));
    }
    Ok(Target {
        package: package.to_lowercase(),
        version: version.map(str::to_owned),
        build: build.map(str::to_owned),
    })
}

/// `split_version_build`: `1.0=h1_0` or `1.0--h1_0` -> (`1.0`, `h1_0`); exactly one separator.
fn split_version_build(v: &str) -> Result<(&str, Option<&str>), TargetError> {
    let sep = if v.contains('=') {
        "="
    } else if v.contains("--") {
        "--"
    } else {
        return Ok((v, None));
    };
    let mut it = v.split(sep);
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a, Some(b))),
        _ => Err(TargetError::VersionBuild(v.into())),
    }
}

/// `requirements_to_mulled_targets`: Galaxy's targets for these package requirements.
pub fn targets(reqs: &[Requirement]) -> Result<Vec<Target>, TargetError> {
    let joined = reqs
        .iter()
        .map(|r| match r.version.as_deref() {
            Some(v) if !v.is_empty() => format!("{}={v}", r.name),
            _ => r.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(",");
    if joined.trim_matches(py_is_space).is_empty() {
        return Ok(Vec::new());
    }
    joined
        .split(',')
        .map(|t| match t.split_once('=') {
            Some((pkg, vs)) if !vs.is_empty() => {
                let (v, b) = split_version_build(vs)?;
                build_target(pkg, Some(v), b)
            }
            Some((pkg, vs)) => build_target(pkg, Some(vs), None),
            None => build_target(t, None, None),
        })
        .collect()
}

fn sha1_hex(s: &str) -> String {
    hex::encode(Sha1::digest(s.as_bytes()))
}

/// `v2_image_name(targets)`: `name[:version[--build]]` for one target, else
/// `mulled-v2-<sha1 of sorted names>[:<sha1 of their versions, "null" where missing>]`.
pub fn v2_image_name(targets: &[Target]) -> String {
    if let [t] = targets {
        let mut s = t.package.clone();
        if let Some(v) = &t.version {
            s.push(':');
            s.push_str(v);
            if let Some(b) = &t.build {
                s.push_str("--");
                s.push_str(b);
            }
        }
        return s;
    }
    let mut sorted: Vec<&Target> = targets.iter().collect();
    sorted.sort_by(|a, b| a.package.cmp(&b.package)); // stable, like Python's sorted()
    let names: Vec<&str> = sorted.iter().map(|t| t.package.as_str()).collect();
    let mut out = format!("mulled-v2-{}", sha1_hex(&names.join("\n")));
    if sorted.iter().any(|t| t.version_set().is_some()) {
        let versions: Vec<&str> = sorted
            .iter()
            .map(|t| t.version_set().unwrap_or("null"))
            .collect();
        out.push(':');
        out.push_str(&sha1_hex(&versions.join("\n")));
    }
    out
}

/// Galaxy's grouping key of a directory entry: `name.rsplit(":", 1)[0]`. It is also the
/// `package_name` (single-package entries) or `package_hash` (mulled-v2 entries) of the entry.
pub fn image_name(entry: &str) -> &str {
    entry.rsplit_once(':').map_or(entry, |(n, _)| n)
}

/// `identifier_to_cached_target(entry, "v2")`: how Galaxy reads one directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// `name[:version[--build]]`; version `""` and `latest` mean none.
    Single {
        /// Everything before the last `:`, case kept.
        package: String,
        /// Tag up to its last `--`.
        version: Option<String>,
        /// Tag after its last `--`.
        build: Option<String>,
    },
    /// `mulled-v2-<hash>[:<version hash>-<build> | :<digits>]`.
    V2 {
        /// `mulled-v2-<hash>`.
        image: String,
        /// Tag before its last `-`.
        version_hash: Option<String>,
        /// Tag after its last `-`, or an all-digit tag.
        build: Option<String>,
    },
}

/// Parse one directory entry; `None` for `mulled-v1-*`, which a v2 resolver ignores.
pub fn parse_entry(entry: &str) -> Option<Cached> {
    let (image, version) = match entry.rsplit_once(':') {
        Some((i, v)) => (i, Some(v)),
        None => (entry, None),
    };
    let version = version.filter(|v| !v.is_empty() && *v != "latest");
    if image.starts_with("mulled-v1-") {
        return None;
    }
    if image.starts_with("mulled-v2-") {
        let (version_hash, build) = match version {
            Some(v) if v.contains('-') => {
                let (h, b) = v.rsplit_once('-').unwrap_or((v, ""));
                (Some(h.to_owned()), Some(b.to_owned()))
            }
            Some(v) if is_py_isdigit(v) => (None, Some(v.to_owned())),
            _ => (None, None),
        };
        return Some(Cached::V2 {
            image: image.into(),
            version_hash,
            build,
        });
    }
    let (version, build) = match version {
        Some(v) if v.contains("--") => {
            let (a, b) = v.rsplit_once("--").unwrap_or((v, ""));
            (Some(a.to_owned()), Some(b.to_owned()))
        }
        v => (v.map(str::to_owned), None),
    };
    Some(Cached::Single {
        package: image.into(),
        version,
        build,
    })
}

/// Python's `str.isdigit()` for the strings that can reach it: non-empty, every character a
/// decimal digit. (Python also counts superscripts and the like; names with those are treated
/// here as "unparsable tag", which only changes which build Galaxy calls it, never a match.)
fn is_py_isdigit(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| py_digit(c).is_some())
}

/// The sort key of one entry in Galaxy's `version_sorted` (`parse_tag`); greater = newer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagKey {
    version: PyVersion,
    /// `None` is Galaxy's `-1`.
    build_number: Option<Num>,
    build_string: PyVersion,
}

impl TagKey {
    /// `parse_tag(entry)`.
    pub fn new(entry: &str) -> TagKey {
        let tag = entry.rsplit(':').next().unwrap_or(entry);
        let mut build_number = trailing_number(tag);
        let (version, build_string) = if let Some((v, b)) = tag.rsplit_once("--") {
            (v, b)
        } else if let Some((v, b)) = tag.rsplit_once('-') {
            (v, b)
        } else {
            build_number = None;
            (tag, "-1")
        };
        TagKey {
            version: parse_version(version),
            build_number,
            build_string: parse_version(build_string),
        }
    }
}

impl Ord for TagKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.build_number.cmp(&other.build_number))
            .then_with(|| self.build_string.cmp(&other.build_string))
    }
}

impl PartialOrd for TagKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `BUILD_NUMBER_REGEX = r"\d+$"` searched in `tag` (`$` also matches before a final `\n`).
fn trailing_number(tag: &str) -> Option<Num> {
    let core = tag.strip_suffix('\n').unwrap_or(tag);
    let start = core
        .char_indices()
        .rev()
        .take_while(|&(_, c)| py_digit(c).is_some())
        .last()
        .map(|(i, _)| i)?;
    Num::parse(&core[start..])
}

/// `version_sorted`: newest first; equal keys keep their order (Python's sort is stable, also
/// with `reverse=True`).
pub fn version_sorted<'a>(entries: &[&'a str]) -> Vec<&'a str> {
    if entries.len() < 2 {
        return entries.to_vec();
    }
    let mut keyed: Vec<(TagKey, &str)> = entries.iter().map(|e| (TagKey::new(e), *e)).collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0));
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// The image name whose directory entries can match `targets` (Galaxy's group key), or `None`
/// when Galaxy cannot match anything (no targets).
pub fn wanted_image(targets: &[Target]) -> Option<String> {
    match targets {
        [] => None,
        [t] => Some(t.package.clone()),
        _ => Some(image_name(&v2_image_name(targets)).to_owned()),
    }
}

/// What a directory entry must be to match the targets (`find_best_matching_cached_image`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want<'t> {
    Single {
        package: &'t str,
        version: Option<&'t str>,
    },
    V2 {
        image: String,
        version_hash: Option<String>,
    },
}

impl Want<'_> {
    fn accepts(&self, c: &Cached) -> bool {
        match (self, c) {
            (
                Want::Single { package, version },
                Cached::Single {
                    package: p,
                    version: v,
                    ..
                },
            ) => p == package && version.is_none_or(|w| v.as_deref() == Some(w)),
            (
                Want::V2 {
                    image,
                    version_hash,
                },
                Cached::V2 {
                    image: i,
                    version_hash: vh,
                    ..
                },
            ) => {
                i == image
                    && version_hash
                        .as_deref()
                        .is_none_or(|w| vh.as_deref() == Some(w))
            }
            _ => false,
        }
    }
}

/// `find_best_matching_cached_image` over the entries of one image name (see [`wanted_image`]),
/// given in directory order. Returns the winning entry and how Galaxy parsed it.
pub fn best_match<'a>(targets: &[Target], group: &[&'a str]) -> Option<(&'a str, Cached)> {
    best_match_sorted(targets, &version_sorted(group))
}

/// [`best_match`] over a group already in [`version_sorted`] order.
pub fn best_match_sorted<'a>(targets: &[Target], sorted: &[&'a str]) -> Option<(&'a str, Cached)> {
    let want = match targets {
        [] => return None,
        [t] => Want::Single {
            package: &t.package,
            version: t.version_set(),
        },
        _ => {
            let name = v2_image_name(targets);
            let (image, version_hash) = match name.split_once(':') {
                Some((h, v)) => (h.to_owned(), Some(v.to_owned())),
                None => (name, None),
            };
            Want::V2 {
                image,
                version_hash,
            }
        }
    };
    sorted
        .iter()
        .find_map(|e| parse_entry(e).filter(|c| want.accepts(c)).map(|c| (*e, c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str, v: Option<&str>) -> Target {
        Target {
            package: p.into(),
            version: v.map(Into::into),
            build: None,
        }
    }

    fn reqs(r: &[&str]) -> Vec<Requirement> {
        r.iter().map(|s| Requirement::parse(s)).collect()
    }

    #[test]
    fn v2_names_match_galaxy_doctests() {
        // From the doctests of v2_image_name in galaxy/tool_util/deps/mulled/util.py.
        assert_eq!(
            v2_image_name(&[t("samtools", Some("1.3.1")), t("bwa", Some("0.7.13"))]),
            "mulled-v2-fe8faa35dbf6dc65a0f7f5d4ea12e31a79f73e40:4d0535c94ef45be8459f429561f0894c3fe0ebcf"
        );
        assert_eq!(
            v2_image_name(&[t("samtools", Some("1.3.1")), t("bwa", None)]),
            "mulled-v2-fe8faa35dbf6dc65a0f7f5d4ea12e31a79f73e40:b0c847e4fb89c343b04036e33b2daa19c4152cf5"
        );
        assert_eq!(
            v2_image_name(&[t("samtools", None), t("bwa", None)]),
            "mulled-v2-fe8faa35dbf6dc65a0f7f5d4ea12e31a79f73e40"
        );
        let with_build = targets(&reqs(&["samtools=1.3.1=h9071d68_10", "bedtools=2.26.0=0"]));
        assert_eq!(
            v2_image_name(&with_build.unwrap()),
            "mulled-v2-8186960447c5cb2faa697666dc1e6d919ad23f3e:a6419f25efff953fc505dbd5ee734856180bb619"
        );
        assert_eq!(
            v2_image_name(&targets(&reqs(&["samtools=1.3.1--py_1"])).unwrap()),
            "samtools:1.3.1--py_1"
        );
    }

    #[test]
    fn requirements_become_targets_like_galaxy() {
        let got = targets(&reqs(&["SamTools=1.9", "bwa="])).unwrap();
        assert_eq!(got, [t("samtools", Some("1.9")), t("bwa", None)]);
        // A comma in a name splits it, as Galaxy's "name=version,..." string does.
        assert_eq!(
            targets(&reqs(&["a,b=2"])).unwrap(),
            [t("a", None), t("b", Some("2"))]
        );
        assert_eq!(targets(&reqs(&[""])).unwrap(), []);
        assert_eq!(
            targets(&reqs(&["sam tools"])),
            Err(TargetError::Package("sam tools".into()))
        );
        assert_eq!(
            targets(&reqs(&["x=1=2=3"])),
            Err(TargetError::VersionBuild("1=2=3".into()))
        );
        assert_eq!(
            targets(&reqs(&["=1"])),
            Err(TargetError::Package("".into()))
        );
    }

    #[test]
    fn entries_parse_like_identifier_to_cached_target() {
        assert_eq!(
            parse_entry("samtools:1.9--h91753b0_8"),
            Some(Cached::Single {
                package: "samtools".into(),
                version: Some("1.9".into()),
                build: Some("h91753b0_8".into())
            })
        );
        assert_eq!(
            parse_entry("apptainer:latest"),
            Some(Cached::Single {
                package: "apptainer".into(),
                version: None,
                build: None
            })
        );
        let h = "mulled-v2-7796e107c35e50a18912f4feb054b112198e9ab8";
        assert_eq!(
            parse_entry(&format!("{h}:137aa2fd-0__old")),
            Some(Cached::V2 {
                image: h.into(),
                version_hash: Some("137aa2fd".into()),
                build: Some("0__old".into())
            })
        );
        assert_eq!(
            parse_entry(&format!("{h}:0")),
            Some(Cached::V2 {
                image: h.into(),
                version_hash: None,
                build: Some("0".into())
            })
        );
        assert_eq!(
            parse_entry(&format!("{h}:deprecate")),
            Some(Cached::V2 {
                image: h.into(),
                version_hash: None,
                build: None
            })
        );
        assert_eq!(parse_entry("mulled-v1-abc:1"), None);
    }

    #[test]
    fn version_sorted_matches_galaxy() {
        // Input order and result of galaxy.tool_util.deps.mulled.util.version_sorted
        // (galaxy-tool-util 26.1.2, packaging 26.3).
        let input = [
            "samtools:1.9--h91753b0_8",
            "samtools:1.10--h2e538c0_3",
            "samtools:1.9--h10a08f8_12",
            "samtools:1.9--0",
            "samtools:latest",
            "samtools:1.10",
            "samtools:1.10rc1--0",
            "samtools:1.10.dev1--0",
            "samtools:1.10a1--0",
            "samtools:1.10.post1--0",
            "samtools:1.10+local--0",
            "samtools:v1.10.0--1",
            "samtools:1!0.1--0",
            "samtools:1.10_beta--0",
            "samtools:abc--0",
            "samtools:1.9--h91753b0_8__old",
        ];
        let galaxy = [
            "samtools:1!0.1--0",
            "samtools:1.10.post1--0",
            "samtools:1.10+local--0",
            "samtools:1.10--h2e538c0_3",
            "samtools:v1.10.0--1",
            "samtools:1.10",
            "samtools:1.10rc1--0",
            "samtools:1.10_beta--0",
            "samtools:1.10a1--0",
            "samtools:1.10.dev1--0",
            "samtools:1.9--h10a08f8_12",
            "samtools:1.9--h91753b0_8",
            "samtools:1.9--0",
            "samtools:1.9--h91753b0_8__old",
            "samtools:latest",
            "samtools:abc--0",
        ];
        assert_eq!(version_sorted(&input), galaxy);
        // A version-less mulled-v2 tag ("0", a PEP 440 version) beats every hash tag (legacy).
        let mulled = [
            "mulled-v2-x:h-0",
            "mulled-v2-x:h-1",
            "mulled-v2-x:h-0__old",
            "mulled-v2-x:h-10",
            "mulled-v2-x:0",
            "mulled-v2-x:deprecate",
        ];
        let galaxy = [
            "mulled-v2-x:0",
            "mulled-v2-x:h-10",
            "mulled-v2-x:h-1",
            "mulled-v2-x:h-0",
            "mulled-v2-x:h-0__old",
            "mulled-v2-x:deprecate",
        ];
        assert_eq!(version_sorted(&mulled), galaxy);
    }

    #[test]
    fn newest_build_wins() {
        let group = [
            "samtools:1.9--h91753b0_8",
            "samtools:1.9--h10a08f8_12",
            "samtools:1.10--h2e538c0_3",
            "samtools:latest",
        ];
        let pick = |v: Option<&str>| best_match(&[t("samtools", v)], &group).map(|m| m.0);
        assert_eq!(pick(None), Some("samtools:1.10--h2e538c0_3"));
        assert_eq!(pick(Some("1.9")), Some("samtools:1.9--h10a08f8_12"));
        assert_eq!(pick(Some("1.8")), None);
        assert_eq!(pick(Some("latest")), None);
    }
}
