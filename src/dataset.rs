//! Labelled photo sets, read one way for every command: an identities file (`path<TAB>identity`
//! lines, paths relative to the file, an optional `file`/`path` header, `#` comments) or a folder
//! with one sub-folder per person. `eval`, `calibrate`, `enroll --dir` and the config's gallery
//! folder all read through here.

use std::path::{Path, PathBuf};

/// One labelled photo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub identity: String,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: cannot read: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}: expected `path<TAB>identity`, got {text:?}")]
    Line { path: PathBuf, line: usize, text: String },
}

/// FNV-1a over bytes, started from `seed`: a hash that is the same on every run and machine (for
/// splitting identities, naming cache files, checking cached paths).
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Reads an identities file.
pub fn read_identities(file: &Path) -> Result<Vec<Labelled>, DatasetError> {
    let text = std::fs::read_to_string(file).map_err(|error| DatasetError::Read { path: file.to_path_buf(), error })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((p, id)) = line.split_once('\t') else {
            return Err(DatasetError::Line { path: file.to_path_buf(), line: n + 1, text: line.to_string() });
        };
        if out.is_empty() && (p == "file" || p == "path") {
            continue;
        }
        out.push(Labelled { identity: id.trim().to_string(), path: base.join(p) });
    }
    Ok(out)
}

/// Reads a folder with one sub-folder per person (the sub-folder's name is the identity); files
/// in sorted order.
pub fn read_folder(folder: &Path) -> Result<Vec<Labelled>, DatasetError> {
    let read = |dir: &Path| std::fs::read_dir(dir).map_err(|error| DatasetError::Read { path: dir.to_path_buf(), error });
    let mut dirs: Vec<_> = read(folder)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let identity = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut files: Vec<_> = read(&dir)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        out.extend(files.into_iter().map(|path| Labelled { identity: identity.clone(), path }));
    }
    Ok(out)
}

/// An identities file or a folder, whichever `path` is.
pub fn read(path: &Path) -> Result<Vec<Labelled>, DatasetError> {
    if path.is_dir() { read_folder(path) } else { read_identities(path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_folders_read_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ann")).unwrap();
        std::fs::create_dir_all(dir.path().join("bob")).unwrap();
        std::fs::write(dir.path().join("ann/2.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("ann/1.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("bob/1.jpg"), b"x").unwrap();
        let folder = read(dir.path()).unwrap();
        assert_eq!(folder.iter().map(|l| l.identity.as_str()).collect::<Vec<_>>(), ["ann", "ann", "bob"]);
        assert!(folder[0].path.ends_with("ann/1.jpg"));
        let tsv = dir.path().join("ids.tsv");
        std::fs::write(&tsv, "file\tidentity\n# note\nann/1.jpg\tann\nann/2.jpg\tann\nbob/1.jpg\tbob\n").unwrap();
        assert_eq!(read(&tsv).unwrap(), folder);
        std::fs::write(&tsv, "ann/1.jpg ann\n").unwrap();
        assert!(matches!(read(&tsv), Err(DatasetError::Line { line: 1, .. })));
    }
}
