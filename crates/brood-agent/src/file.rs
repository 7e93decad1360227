//! `ReadFile` and `WriteFile`: bounded reads and positioned writes of guest files.
//!
//! Paths must be absolute. A read returns at most
//! [`brood_proto::MAX_DATA_CHUNK`] bytes, so the reply always fits a frame; the
//! host pages through larger files with `offset`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use brood_proto::{
    AgentError, ErrorKind, FileData, FileKind, FileStat, MAX_DATA_CHUNK, ReadFileRequest,
    WriteFileRequest,
};

/// Errors of file requests.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path is not absolute.
    #[error("path {path:?} is not absolute")]
    NotAbsolute {
        /// The path as given.
        path: String,
    },
    /// The file could not be opened or created.
    #[error("open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What open reported.
        #[source]
        source: io::Error,
    },
    /// Reading failed.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What read reported.
        #[source]
        source: io::Error,
    },
    /// Writing, truncating or setting the mode failed.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the write reported.
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// The error as the host sees it.
    pub fn agent_error(&self) -> AgentError {
        let kind = match self {
            FileError::NotAbsolute { .. } => ErrorKind::BadRequest,
            FileError::Open { source, .. }
            | FileError::Read { source, .. }
            | FileError::Write { source, .. } => crate::serve::io_kind(source),
        };
        AgentError::new(kind, crate::console::chain(self))
    }
}

fn absolute(path: &str) -> Result<&Path, FileError> {
    let p = Path::new(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(FileError::NotAbsolute {
            path: crate::console::cut(path, 256).to_owned(),
        })
    }
}

/// Reads up to `max_len` bytes (capped at [`MAX_DATA_CHUNK`]) from `offset`.
pub fn read(req: &ReadFileRequest) -> Result<FileData, FileError> {
    let path = absolute(&req.path)?;
    let read_err = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(|source| FileError::Open {
        path: path.to_owned(),
        source,
    })?;
    let meta = file.metadata().map_err(read_err)?;
    let want = usize::try_from(req.max_len)
        .unwrap_or(MAX_DATA_CHUNK)
        .min(MAX_DATA_CHUNK);
    // Seek only when needed, so offset 0 works on pipes and character devices.
    if req.offset > 0 {
        file.seek(SeekFrom::Start(req.offset)).map_err(read_err)?;
    }
    let mut data = Vec::new();
    (&mut file)
        .take(u64::try_from(want).unwrap_or(u64::MAX))
        .read_to_end(&mut data)
        .map_err(read_err)?;
    let end = req
        .offset
        .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
    // read_to_end stops short only at end of file; a full read of a regular
    // file is at its end when it reached the size.
    let eof = data.len() < want || (meta.is_file() && end >= meta.len());
    Ok(FileData {
        data: data.into(),
        size: meta.len(),
        eof,
    })
}

/// Describes the file at `path` (following symbolic links).
pub fn stat(path: &str) -> Result<FileStat, FileError> {
    let path = absolute(path)?;
    let meta = std::fs::metadata(path).map_err(|source| FileError::Open {
        path: path.to_owned(),
        source,
    })?;
    let kind = if meta.is_file() {
        FileKind::File
    } else if meta.is_dir() {
        FileKind::Dir
    } else {
        FileKind::Other
    };
    Ok(FileStat {
        kind,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
    })
}

/// Writes `data` at `offset`, creating the file with `mode` if it is missing.
pub fn write(req: &WriteFileRequest) -> Result<u64, FileError> {
    let path = absolute(&req.path)?;
    let write_err = |source| FileError::Write {
        path: path.to_owned(),
        source,
    };
    let mode = req.mode & 0o7777;
    let (file, created) = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => (file, true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| FileError::Open {
                    path: path.to_owned(),
                    source,
                })?;
            (file, false)
        }
        Err(source) => {
            return Err(FileError::Open {
                path: path.to_owned(),
                source,
            });
        }
    };
    if created {
        // The mode given to open(2) is filtered by the umask; the host asked
        // for this exact mode.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(write_err)?;
    }
    if req.truncate {
        file.set_len(req.offset).map_err(write_err)?;
    }
    file.write_all_at(&req.data, req.offset)
        .map_err(write_err)?;
    Ok(u64::try_from(req.data.len()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_req(path: &Path, offset: u64, max_len: u32) -> ReadFileRequest {
        ReadFileRequest {
            path: path.to_str().unwrap().to_owned(),
            offset,
            max_len,
        }
    }

    fn write_req(path: &Path, offset: u64, truncate: bool, data: &[u8]) -> WriteFileRequest {
        WriteFileRequest {
            path: path.to_str().unwrap().to_owned(),
            offset,
            truncate,
            mode: 0o640,
            data: data.to_vec(),
        }
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(write(&write_req(&p, 0, false, b"hello world")).unwrap(), 11);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(write(&write_req(&p, 6, true, b"brood")).unwrap(), 5);
        assert_eq!(std::fs::read(&p).unwrap(), b"hello brood");

        let all = read(&read_req(&p, 0, 100)).unwrap();
        assert_eq!(
            (&all.data[..], all.size, all.eof),
            (&b"hello brood"[..], 11, true)
        );
        let part = read(&read_req(&p, 2, 3)).unwrap();
        assert_eq!((&part.data[..], part.eof), (&b"llo"[..], false));
        let tail = read(&read_req(&p, 6, 5)).unwrap();
        assert_eq!((&tail.data[..], tail.eof), (&b"brood"[..], true));
        let past = read(&read_req(&p, 50, 5)).unwrap();
        assert!(past.data.is_empty() && past.eof);
    }

    #[test]
    fn stat_reports_kind_size_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&write_req(&p, 0, false, b"abc")).unwrap();
        let st = stat(p.to_str().unwrap()).unwrap();
        assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 3, 0o640));
        let d = stat(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(d.kind, FileKind::Dir);
        assert_eq!(
            stat("rel").unwrap_err().agent_error().kind,
            ErrorKind::BadRequest
        );
        let gone = stat("/nonexistent/brood").unwrap_err();
        assert_eq!(gone.agent_error().kind, ErrorKind::NotFound);
    }

    #[test]
    fn write_past_end_leaves_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&write_req(&p, 4, false, b"x")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\0\0\0\0x");
    }

    #[test]
    fn read_is_capped_at_the_data_chunk() {
        let r = read(&read_req(Path::new("/dev/zero"), 0, u32::MAX)).unwrap();
        assert_eq!(r.data.len(), MAX_DATA_CHUNK);
        assert!(!r.eof);
    }

    #[test]
    fn errors_have_kinds() {
        let rel = read(&ReadFileRequest {
            path: "etc/passwd".into(),
            offset: 0,
            max_len: 1,
        })
        .unwrap_err();
        assert_eq!(rel.agent_error().kind, ErrorKind::BadRequest);
        let missing = read(&read_req(Path::new("/nonexistent/brood"), 0, 1)).unwrap_err();
        assert_eq!(missing.agent_error().kind, ErrorKind::NotFound);
        let nul = read(&ReadFileRequest {
            path: "/a\0b".into(),
            offset: 0,
            max_len: 1,
        })
        .unwrap_err();
        assert_eq!(nul.agent_error().kind, ErrorKind::BadRequest);
        let dir = write(&write_req(Path::new("/nonexistent/dir/f"), 0, false, b"x")).unwrap_err();
        assert_eq!(dir.agent_error().kind, ErrorKind::NotFound);
    }
}
