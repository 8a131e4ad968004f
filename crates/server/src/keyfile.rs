//! Key files created exactly once, even by processes starting at the same moment on one data
//! directory: the key is written whole to a private temporary file, then hard-linked to its name,
//! which fails if the name exists. The loser of a race reads the winner's file, which is complete
//! by then (a plain `create_new` would let it read a file still being written).

use std::io::Write;
use std::path::Path;

/// Creates `path` holding `contents` (mode 0600 on Unix) unless it exists. Returns true when this
/// call created it, false when another process (or an earlier start) already had.
pub fn create_once(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = write_new(&tmp, contents).and_then(|()| std::fs::hard_link(&tmp, path));
    // The temporary name goes in every case; the key stays under `path` if it was linked.
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                // Make the new name durable too (best effort: not every platform syncs folders).
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::create_once;
    use std::sync::{Arc, Barrier};

    #[test]
    fn processes_racing_to_create_a_key_agree_on_one_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("keys").join("data.key"));
        let start = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    let mine = vec![b'a' + i; 64];
                    start.wait();
                    let created = create_once(&path, &mine).unwrap();
                    // Whoever lost reads a whole key at once, never a partial one.
                    let read = std::fs::read(path.as_ref()).unwrap();
                    assert_eq!(read.len(), 64);
                    (created, mine, read)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|r| r.0).collect();
        assert_eq!(winners.len(), 1);
        for (_, _, read) in &results {
            assert_eq!(read, &winners[0].1);
        }
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("data.key")]);
        // A later start finds it.
        assert!(!create_once(&path, b"other").unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path.as_ref())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
