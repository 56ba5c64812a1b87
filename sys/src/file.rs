//! The one way the daemons read a file they were told to trust: configs, policies and keys.
//!
//! The file must be a regular file of at most [`MAX_FILE_BYTES`]. A FIFO, a device such as
//! `/dev/zero` or a directory is refused before anything is read, so `check` cannot hang or
//! exhaust memory on them, and a directory gets a clearer error than `EISDIR`.

use std::fs::{File, Metadata};
use std::io::{self, Read as _};
use std::path::Path;

/// The largest file read. Far above any real config (room for tens of thousands of peers); it
/// only stops `/dev/zero` or a runaway file from being read into memory whole.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Opens `path` and checks that it is a regular file, reading nothing yet. The metadata is the
/// opened file's own, so a check on it cannot race a rename.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, meta))
}

/// Reads the rest of an opened file as UTF-8 text, refusing one over [`MAX_FILE_BYTES`].
pub fn read_text(file: File) -> io::Result<String> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`] as UTF-8 text.
pub fn read_bounded(path: &Path) -> io::Result<String> {
    let (file, _) = open_regular(path)?;
    read_text(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("upmt-sys-file-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_device_or_a_directory_is_refused_without_reading_it() {
        for path in ["/dev/zero", "/tmp"] {
            let e = read_bounded(Path::new(path)).unwrap_err();
            assert_eq!(e.to_string(), "not a regular file", "{path}");
        }
    }

    #[test]
    fn a_file_over_16_mib_is_refused_by_size() {
        let path = temp("huge");
        File::create(&path)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let result = read_bounded(&path);
        let _ = std::fs::remove_file(&path);
        let e = result.unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn binary_bytes_are_refused_as_not_utf8_and_text_is_read_whole() {
        let path = temp("bin");
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        let e = read_bounded(&path).unwrap_err();
        std::fs::write(&path, "a = 1\n").unwrap();
        let ok = read_bounded(&path);
        let _ = std::fs::remove_file(&path);
        assert!(e.to_string().contains("valid UTF-8"), "{e}");
        assert_eq!(ok.unwrap(), "a = 1\n");
    }

    #[test]
    fn a_missing_file_is_the_os_error() {
        let e = read_bounded(Path::new("/nonexistent/upmt")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
