//! `depotfs resolve`: which image file Galaxy's `cached_mulled_singularity` container resolver
//! would pick from a directory (normally a depotfs mount of the `all/` directory) for a set of
//! package requirements.
//!
//! ```text
//! depotfs resolve [--dir DIR] [--json] REQUIREMENT...     REQUIREMENT = name | name=version
//! ```
//!
//! One requirement: the entry named `name:version--build` with exactly that version and the
//! newest build by Galaxy's ordering (any version, newest first, when none is given). Several:
//! the entry named with Galaxy's mulled-v2 hash of them. Prints the absolute path (as Galaxy's
//! `os.path.abspath(os.path.join(dir, entry))`), or with `--json` one object:
//! `{"requirements", "targets", "image_name", "path", "name", "version", "build"}` (for mulled-v2
//! entries `version` is the version hash).
//!
//! `DIR` is `--dir`, else `$DEPOTFS_RESOLVE_DIR`, else [`DEFAULT_DIR`].
//! Exit status: 0 found, 1 no match, 2 invalid requirement or unreadable directory.
//!
//! The semantics are Galaxy's (galaxy-tool-util 26.1.2), in [`galaxy`] and [`pyversion`]; the
//! integration test `tests/galaxy.rs` checks them against Galaxy's own resolver on the real
//! 118,594-entry listing. A hidden `--batch FILE` (`-` = stdin) resolves one JSON array of
//! requirements per line over a single directory listing and prints one JSON object per line
//! (with `"error"` for invalid input), for those tests and for benchmarks.

mod galaxy;
mod pyversion;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use galaxy::{Cached, Requirement, Target};

/// Where `depotfs resolve` looks when neither `--dir` nor `$DEPOTFS_RESOLVE_DIR` is given: the
/// `all/` directory of the Galaxy images repository mounted at `/depotfs/singularity`.
pub const DEFAULT_DIR: &str = "/depotfs/singularity/all";

/// Environment variable naming the default directory.
pub const DIR_ENV: &str = "DEPOTFS_RESOLVE_DIR";

/// Arguments of `depotfs resolve`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Prints the absolute path of the image Galaxy's cached_mulled_singularity \
resolver (galaxy-tool-util 26.1.2) would pick: one requirement -> name:version--build, exact \
version, newest build; several -> their mulled-v2 image. Requirement names are lower-cased, \
directory names are not.\n\nExit status: 0 found, 1 no match, 2 invalid requirement or \
unreadable directory."
)]
pub struct ResolveArgs {
    /// Directory of images, as Galaxy's `cache_directory` [default: $DEPOTFS_RESOLVE_DIR, else
    /// /depotfs/singularity/all]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print a JSON object (path, name, version, build, requirements, targets, image_name).
    #[arg(long)]
    pub json: bool,
    /// Resolve one JSON array of requirements per line of FILE (`-`: stdin), listing DIR once;
    /// prints one JSON object per line.
    #[arg(
        long,
        value_name = "FILE",
        hide = true,
        conflicts_with = "requirements"
    )]
    pub batch: Option<PathBuf>,
    /// Requirements: `name` or `name=version` (`name=version=build` and `name=version--build` as
    /// Galaxy reads them: the build is ignored).
    #[arg(value_name = "REQUIREMENT", required_unless_present = "batch")]
    pub requirements: Vec<String>,
}

/// Exit status for invalid requirements and unreadable directories.
const EXIT_USAGE: u8 = 2;

/// Run `depotfs resolve`.
pub fn run(a: ResolveArgs) -> anyhow::Result<ExitCode> {
    let dir = a
        .dir
        .or_else(|| std::env::var_os(DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    if let Some(batch) = &a.batch {
        return run_batch(&dir, batch);
    }
    let reqs: Vec<Requirement> = a
        .requirements
        .iter()
        .map(|r| Requirement::parse(r))
        .collect();
    let shown = a.requirements.join(" ");
    let targets = match galaxy::targets(&reqs) {
        Ok(t) if t.is_empty() => {
            // Galaxy resolves nothing for a tool without package requirements.
            if a.json {
                let answer = Answer::new(&dir, &a.requirements, &[], None, None);
                println!("{}", serde_json::to_string(&answer)?);
            }
            eprintln!(
                "depotfs resolve: no package name in requirements {shown:?}: nothing to match"
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(t) => t,
        Err(e) => {
            if a.json {
                let answer = Answer::new(&dir, &a.requirements, &[], None, Some(e.to_string()));
                println!("{}", serde_json::to_string(&answer)?);
            }
            eprintln!("depotfs resolve: invalid requirements {shown:?}: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let wanted = galaxy::wanted_image(&targets).unwrap_or_default();
    // Keep the entries Galaxy could match, and those differing only in case for the message.
    let entries = match list_dir(&dir, |e| {
        galaxy::image_name(e).eq_ignore_ascii_case(&wanted)
    }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("depotfs resolve: {e:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let (group, other_case): (Vec<&str>, Vec<&str>) = entries
        .iter()
        .map(String::as_str)
        .partition(|e| galaxy::image_name(e) == wanted);
    let found = galaxy::best_match(&targets, &group);
    let answer = Answer::new(&dir, &a.requirements, &targets, found.as_ref(), None);
    if a.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else if let Some(p) = &answer.path {
        println!("{p}");
    }
    if found.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "depotfs resolve: no image in {} for {shown}: {}",
        dir.display(),
        explain_miss(&targets, &wanted, &group, &other_case)
    );
    Ok(ExitCode::FAILURE)
}

/// Why nothing matched, in one line.
fn explain_miss(targets: &[Target], wanted: &str, group: &[&str], other_case: &[&str]) -> String {
    let looked_for = match targets {
        [t] => match t.version_set() {
            Some(v) => format!("{wanted}:{v}--<build> or {wanted}:{v}"),
            None => format!("{wanted}[:<tag>]"),
        },
        _ => format!("{}[-<build>]", galaxy::v2_image_name(targets)),
    };
    let mut msg = format!("looked for {looked_for}");
    if group.is_empty() {
        msg.push_str(&format!("; no entry is named {wanted}"));
    } else {
        let newest = galaxy::version_sorted(group)[0];
        msg.push_str(&format!(
            "; {} entries are named {wanted} (newest {newest}), none with that version",
            group.len()
        ));
    }
    if let Some(e) = other_case.first() {
        msg.push_str(&format!(
            "; {e} differs only in case, and Galaxy lower-cases requirement names but not entry names"
        ));
    }
    msg
}

/// One answer, as printed by `--json` and `--batch`.
#[derive(Debug, serde::Serialize)]
struct Answer<'a> {
    requirements: &'a [String],
    targets: &'a [Target],
    /// Galaxy's `v2_image_name` of the targets (what it logs as the tool's image name).
    image_name: Option<String>,
    path: Option<String>,
    name: Option<&'a str>,
    version: Option<String>,
    build: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl<'a> Answer<'a> {
    fn new(
        dir: &Path,
        requirements: &'a [String],
        targets: &'a [Target],
        found: Option<&(&'a str, Cached)>,
        error: Option<String>,
    ) -> Answer<'a> {
        let (version, build) = match found.map(|f| &f.1) {
            Some(Cached::Single { version, build, .. }) => (version.clone(), build.clone()),
            Some(Cached::V2 {
                version_hash,
                build,
                ..
            }) => (version_hash.clone(), build.clone()),
            None => (None, None),
        };
        Answer {
            requirements,
            targets,
            image_name: (!targets.is_empty()).then(|| galaxy::v2_image_name(targets)),
            path: found.map(|f| abspath(&dir.join(f.0)).to_string_lossy().into_owned()),
            name: found.map(|f| f.0),
            version,
            build,
            error,
        }
    }
}

/// Names of the entries of `dir` for which `keep` holds, in readdir order (as `os.listdir`).
/// Names that are not UTF-8 are skipped: no requirement given as text can name them.
fn list_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list image directory {}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("reading directory {}", dir.display()))?;
        match entry.file_name().into_string() {
            Ok(name) if keep(&name) => out.push(name),
            Ok(_) => {}
            Err(name) => tracing::debug!(?name, "skipping non-UTF-8 entry"),
        }
    }
    Ok(out)
}

/// Python's `os.path.abspath`: made absolute against the working directory and normalised
/// lexically (`.`, `..`, repeated slashes), without resolving symlinks.
fn abspath(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    // POSIX keeps exactly two leading slashes, and so does Python's normpath.
    let s = joined.as_os_str().as_encoded_bytes();
    if s.starts_with(b"//") && !s.starts_with(b"///") {
        let mut two = std::ffi::OsString::from("/");
        two.push(out.as_os_str());
        return PathBuf::from(two);
    }
    out
}

/// `--batch`: one JSON array of requirement strings per input line, one JSON object per output
/// line; the directory is listed once, like Galaxy's `dir_mtime` cacher between changes.
fn run_batch(dir: &Path, input: &Path) -> anyhow::Result<ExitCode> {
    let names = match list_dir(dir, |_| true) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("depotfs resolve: {e:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    // Entries per image name in readdir order; sorted (Galaxy's order) on first use.
    let mut groups: HashMap<&str, (bool, Vec<&str>)> = HashMap::new();
    for n in &names {
        groups.entry(galaxy::image_name(n)).or_default().1.push(n);
    }
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input)
            .with_context(|| format!("cannot open batch file {}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {} line {}", input.display(), i + 1))?;
        let reqs: Vec<String> = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let err = format!("line {}: not a JSON array of strings: {e}", i + 1);
                let a = Answer::new(dir, &[], &[], None, Some(err));
                writeln!(out, "{}", serde_json::to_string(&a)?)?;
                continue;
            }
        };
        let parsed: Vec<Requirement> = reqs.iter().map(|r| Requirement::parse(r)).collect();
        let line_out = match galaxy::targets(&parsed) {
            Ok(targets) => {
                let group =
                    match galaxy::wanted_image(&targets).and_then(|w| groups.get_mut(w.as_str())) {
                        Some((sorted, g)) => {
                            if !*sorted {
                                *g = galaxy::version_sorted(g);
                                *sorted = true;
                            }
                            g.as_slice()
                        }
                        None => &[],
                    };
                let found = galaxy::best_match_sorted(&targets, group);
                serde_json::to_string(&Answer::new(dir, &reqs, &targets, found.as_ref(), None))?
            }
            Err(e) => {
                serde_json::to_string(&Answer::new(dir, &reqs, &[], None, Some(e.to_string())))?
            }
        };
        writeln!(out, "{line_out}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The image name Galaxy derives for `requirements` (`name` or `name=version` each): for one,
/// `name:version`; for several, `mulled-v2-<hash>:<hash>` (without the `-<build>` suffix).
/// Used by `depotfs demo` to name its sample multi-package image.
pub fn image_name_for(requirements: &[&str]) -> anyhow::Result<String> {
    let reqs: Vec<Requirement> = requirements.iter().map(|r| Requirement::parse(r)).collect();
    let targets = galaxy::targets(&reqs)
        .map_err(|e| anyhow::anyhow!("invalid requirements {requirements:?}: {e}"))?;
    Ok(galaxy::v2_image_name(&targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abspath_is_lexical_like_python() {
        assert_eq!(
            abspath(Path::new("/a/./b/../c//d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(abspath(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(
            abspath(Path::new("//srv/all/x")),
            PathBuf::from("//srv/all/x")
        );
        assert_eq!(abspath(Path::new("///srv/x")), PathBuf::from("/srv/x"));
        assert!(abspath(Path::new("rel/x")).is_absolute());
    }
}
