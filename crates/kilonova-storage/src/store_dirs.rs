//! Which data directory is which: every directory of a segment store holds
//! a small identity file with its own number and the numbers (and last
//! known paths) of all the store's directories.
//!
//! A segment's id carries its directory's number, so a log's metadata
//! names segments in any directory. A directory left out of the
//! configuration would make those segments look deleted; the identity
//! files let the store refuse to open instead, naming the missing
//! directory. Numbers stay with directories, not with their place in the
//! configuration: reordering the list, or mounting a disk elsewhere,
//! changes nothing.
//!
//! The file (`DATA_DIR`) is text:
//!
//! ```text
//! kilonova data directory
//! this 1
//! member 0 /data/a/storage
//! member 1 /data/b/storage
//! ```
//!
//! A directory holding a journal but no identity file was written by a
//! store with one directory: it is number 0.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::position::MAX_DIRS;

/// The identity file's name inside a data directory.
pub(crate) const IDENTITY_FILE: &str = "DATA_DIR";
const HEADER: &str = "kilonova data directory";

/// What one directory's identity file says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    number: u8,
    /// Every directory of the store by number, with its path when last opened.
    members: BTreeMap<u8, String>,
}

/// Gives each of `dirs` (locked by the caller) its number, in order, and
/// records the membership in each: a directory keeps the number it has; a
/// new one gets the lowest unused. Refuses a directory listed twice, two
/// directories claiming one number, and a recorded member that is not
/// among `dirs`.
pub(crate) fn assign(dirs: &[PathBuf]) -> Result<Vec<u8>> {
    let refuse = |detail: String| Err(StorageError::DataDirs(detail));
    let mut canonical = Vec::with_capacity(dirs.len());
    for d in dirs {
        let c =
            fs::canonicalize(d).map_err(|e| StorageError::io("resolving a data directory", e))?;
        if let Some(i) = canonical.iter().position(|x| *x == c) {
            return refuse(format!(
                "{} and {} are the same directory",
                dirs[i].display(),
                d.display()
            ));
        }
        canonical.push(c);
    }
    if dirs.len() > MAX_DIRS {
        return refuse(format!("{} directories, at most {MAX_DIRS}", dirs.len()));
    }
    let mut numbers: Vec<Option<u8>> = Vec::with_capacity(dirs.len());
    let mut recorded: BTreeMap<u8, String> = BTreeMap::new();
    for d in dirs {
        let number = match read(d)? {
            Some(id) => {
                recorded.extend(id.members);
                Some(id.number)
            }
            None if holds_a_journal(d)? => Some(0),
            None => None,
        };
        if let Some(n) = number {
            if let Some(i) = numbers.iter().position(|x| *x == Some(n)) {
                return refuse(format!(
                    "{} and {} are both directory {n}",
                    dirs[i].display(),
                    d.display()
                ));
            }
        }
        numbers.push(number);
    }
    if let Some((n, path)) = recorded.iter().find(|(n, _)| !numbers.contains(&Some(**n))) {
        return refuse(format!(
            "directory {n} (last opened at {path}) is not configured: the segments it holds would \
             be missing from their topics; list it again (in any order, at any path)"
        ));
    }
    let mut taken: Vec<u8> = numbers.iter().flatten().copied().collect();
    let assigned: Vec<u8> = numbers
        .into_iter()
        .map(|n| {
            n.unwrap_or_else(|| {
                // At most MAX_DIRS directories (checked above) never run out.
                let free = (0..MAX_DIRS as u8)
                    .find(|c| !taken.contains(c))
                    .unwrap_or(0);
                taken.push(free);
                free
            })
        })
        .collect();
    let members: BTreeMap<u8, String> = assigned
        .iter()
        .zip(dirs)
        .map(|(n, d)| (*n, d.display().to_string()))
        .collect();
    for (n, d) in assigned.iter().zip(dirs) {
        let id = Identity {
            number: *n,
            members: members.clone(),
        };
        if read(d)?.as_ref() != Some(&id) {
            write(d, &id)?;
        }
    }
    Ok(assigned)
}

/// Whether `dir` holds journal files or a checkpoint (a store wrote it).
fn holds_a_journal(dir: &Path) -> Result<bool> {
    let rd = fs::read_dir(dir).map_err(|e| StorageError::io("listing a data directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::io("listing a data directory", e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name == "CHECKPOINT" || name.ends_with(".log") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read(dir: &Path) -> Result<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("reading a data directory's identity", e)),
    };
    parse(&text)
        .map(Some)
        .map_err(|detail| StorageError::InvalidFile {
            path: path.display().to_string(),
            detail,
        })
}

fn parse(text: &str) -> std::result::Result<Identity, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("the first line is not {HEADER:?}"));
    }
    let number = |s: &str| match s.parse::<u8>() {
        Ok(n) if usize::from(n) < MAX_DIRS => Ok(n),
        _ => Err(format!("{s:?} is not a directory number (0..{MAX_DIRS})")),
    };
    let mut this = None;
    let mut members = BTreeMap::new();
    for line in lines {
        match line.split_once(' ') {
            Some(("this", n)) => this = Some(number(n)?),
            Some(("member", rest)) => {
                let (n, path) = rest.split_once(' ').unwrap_or((rest, ""));
                members.insert(number(n)?, path.to_string());
            }
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    let number = this.ok_or("no \"this\" line")?;
    if !members.contains_key(&number) {
        return Err(format!("directory {number} is not among its members"));
    }
    Ok(Identity { number, members })
}

fn render(id: &Identity) -> String {
    let mut out = format!("{HEADER}\nthis {}\n", id.number);
    for (n, path) in &id.members {
        // A line break in a path would end the line early.
        out.push_str(&format!("member {n} {}\n", path.replace('\n', " ")));
    }
    out
}

/// Replaces `dir`'s identity file durably (a temporary file renamed over it).
fn write(dir: &Path, id: &Identity) -> Result<()> {
    let io = |e| StorageError::io("writing a data directory's identity", e);
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(render(id).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, dir.join(IDENTITY_FILE)).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| {
                let d = root.join(n);
                fs::create_dir_all(&d).unwrap();
                d
            })
            .collect()
    }

    #[test]
    fn new_directories_get_the_lowest_free_numbers_and_keep_them_in_any_order() {
        let root = tempfile::tempdir().unwrap();
        let ab = dirs(root.path(), &["a", "b"]);
        assert_eq!(assign(&ab).unwrap(), vec![0, 1]);
        let ba = vec![ab[1].clone(), ab[0].clone()];
        assert_eq!(assign(&ba).unwrap(), vec![1, 0]);
        let mut bac = ba.clone();
        bac.extend(dirs(root.path(), &["c"]));
        assert_eq!(assign(&bac).unwrap(), vec![1, 0, 2]);
    }

    #[test]
    fn a_missing_member_is_refused_with_its_last_path() {
        let root = tempfile::tempdir().unwrap();
        let ab = dirs(root.path(), &["a", "b"]);
        assign(&ab).unwrap();
        let err = assign(&ab[..1]).unwrap_err().to_string();
        assert!(
            err.contains("directory 1") && err.contains(&ab[1].display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_directory_listed_twice_or_a_number_claimed_twice_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let ab = dirs(root.path(), &["a", "b"]);
        let twice = vec![ab[0].clone(), ab[0].join("..").join("a")];
        assert!(assign(&twice)
            .unwrap_err()
            .to_string()
            .contains("same directory"));
        assign(&ab[..1]).unwrap();
        // b is made a copy of a: both claim number 0.
        fs::copy(ab[0].join(IDENTITY_FILE), ab[1].join(IDENTITY_FILE)).unwrap();
        assert!(assign(&ab)
            .unwrap_err()
            .to_string()
            .contains("both directory 0"));
    }

    #[test]
    fn a_journal_without_an_identity_is_directory_zero() {
        let root = tempfile::tempdir().unwrap();
        let ab = dirs(root.path(), &["new", "old"]);
        fs::write(ab[1].join("CHECKPOINT"), b"").unwrap();
        assert_eq!(assign(&ab).unwrap(), vec![1, 0]);
    }

    #[test]
    fn malformed_identities_are_refused_not_guessed() {
        for bad in [
            "",
            "kilonova data directory\n",
            "kilonova data directory\nthis 1\nmember 0 /a\n",
            "kilonova data directory\nthis 64\nmember 64 /a\n",
            "kilonova data directory\nthis x\n",
            "kilonova data directory\nthis 0\nmember 0 /a\nother\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let id = Identity {
            number: 1,
            members: [(0, "/a b".to_string()), (1, "/c".to_string())].into(),
        };
        assert_eq!(parse(&render(&id)), Ok(id));
    }
}
