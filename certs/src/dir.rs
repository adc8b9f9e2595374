//! `--certs-dir`: PEM pairs `<name>.crt` (full chain) + `<name>.key`, or `<name>.pem` (chain and key).
//! Followed by polling each file's modification time and size (cheap, and works on every file system and
//! in containers where inotify does not cross mounts); a change re-reads the whole directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Certificate;

/// What a directory looked like: file name → (modified, length).
type Fingerprint = BTreeMap<String, (Option<SystemTime>, u64)>;

pub struct DirSource {
    dir: PathBuf,
    seen: Option<Fingerprint>,
}

/// One file (or pair) that could not be used, for the log.
#[derive(Debug)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), seen: None }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory's certificates when anything in it changed since the last call (always on the
    /// first), or `None` when nothing did. A missing directory holds no certificates.
    pub fn poll(&mut self) -> Option<(Vec<Certificate>, Vec<Skipped>)> {
        let now = fingerprint(&self.dir);
        if self.seen.as_ref() == Some(&now) {
            return None;
        }
        let loaded = load(&self.dir, &now);
        // A file caught mid-write is read again on the next poll, when its size or time moved on.
        self.seen = Some(now);
        Some(loaded)
    }
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Fingerprint::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".crt") || name.ends_with(".key") || name.ends_with(".pem")) {
            continue;
        }
        // Follows symlinks, as Kubernetes secret mounts are made of them.
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            if meta.is_file() {
                out.insert(name, (meta.modified().ok(), meta.len()));
            }
        }
    }
    out
}

fn load(dir: &Path, files: &Fingerprint) -> (Vec<Certificate>, Vec<Skipped>) {
    let mut certs = Vec::new();
    let mut skipped = Vec::new();
    for name in files.keys() {
        let (stem, key_name) = if let Some(stem) = name.strip_suffix(".crt") {
            (stem, format!("{stem}.key"))
        } else if name.ends_with(".pem") {
            (name.as_str(), name.clone())
        } else {
            continue;
        };
        let read = |file: &str| std::fs::read(dir.join(file)).map_err(|e| e.to_string());
        let result = read(name).and_then(|cert| {
            if !files.contains_key(&key_name) {
                return Err(format!("no {key_name} beside it"));
            }
            warn_if_readable_by_others(&dir.join(&key_name));
            let key = read(&key_name)?;
            Certificate::from_pem(&cert, &key).map_err(|e| e.to_string())
        });
        match result {
            Ok(cert) => certs.push(cert),
            Err(reason) => skipped.push(Skipped { name: stem.to_string(), reason }),
        }
    }
    (certs, skipped)
}

/// Private keys should be mode 0600; the edge still serves them, but says so.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "private key file is readable by others; chmod 600 it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pem::tests::self_signed;

    #[test]
    fn pairs_and_single_pems_load_and_changes_are_noticed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = DirSource::new(dir.path());
        let (certs, _) = source.poll().expect("first poll reports");
        assert!(certs.is_empty());
        assert!(source.poll().is_none(), "nothing changed");

        let (c, k) = self_signed(&["pair.example.test"]);
        std::fs::write(dir.path().join("site.crt"), c).expect("write");
        std::fs::write(dir.path().join("site.key"), k).expect("write");
        let (c, k) = self_signed(&["single.example.test"]);
        std::fs::write(dir.path().join("other-name.pem"), format!("{c}{k}")).expect("write");
        let (certs, skipped) = source.poll().expect("changed");
        assert!(skipped.is_empty(), "{skipped:?}");
        let mut names: Vec<&str> = certs.iter().flat_map(|c| c.names.iter().map(String::as_str)).collect();
        names.sort();
        assert_eq!(names, ["pair.example.test", "single.example.test"]);

        std::fs::remove_file(dir.path().join("other-name.pem")).expect("rm");
        let (certs, _) = source.poll().expect("changed");
        assert_eq!(certs.len(), 1);
    }

    #[test]
    fn a_certificate_without_its_key_is_skipped_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _) = self_signed(&["lonely.example.test"]);
        std::fs::write(dir.path().join("lonely.crt"), c).expect("write");
        let (certs, skipped) = DirSource::new(dir.path()).poll().expect("poll");
        assert!(certs.is_empty());
        assert_eq!(skipped[0].name, "lonely");
        assert!(skipped[0].reason.contains("lonely.key"), "{}", skipped[0].reason);
    }
}
