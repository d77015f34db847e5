//! A store that keeps tokens in a JSON file.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{StoreLock, StoredToken, TokenStore};
use crate::{Error, error::StoreError};

/// Version written to, and required in, the token file.
const FORMAT_VERSION: u32 = 1;

/// The longest a process waits for another that holds a [`FileStore`]'s lock: twice a token
/// request's default timeout, so that a refresh in progress elsewhere can finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting process tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Keeps the token state in a JSON file.
///
/// Every save writes a new file next to the old one (created with mode 0600 on Unix), flushes it
/// to disk, renames it over the old one and flushes the directory, so the file always holds
/// either the old state or the new one, never a torn write. The file has a `version` field;
/// a file of another version is an error rather than a guess.
///
/// **Several processes may share the file.** A grant refreshes under an advisory lock on a file
/// beside it (the path with `.lock` added; [`TokenStore::lock`]), and reads the file again once
/// it holds the lock: a process that finds an access token another one just bought uses it, and
/// one that must refresh sends the refresh token the last process saved. So a refresh token is
/// sent once across all the processes, and a rotated one is never lost to a race. The lock
/// goes when its holder's file is closed, which the operating system does when a process dies;
/// a process waits for it at most [`LOCK_WAIT`], then fails the fetch with [`Error::Store`].
/// The lock is advisory: it keeps out only other users of this crate (or of `flock` on Unix,
/// `LockFileEx` on Windows), and network file systems may not honour it.
///
/// ```json
/// {
///   "version": 1,
///   "refresh_token": "...",
///   "access_token": "...",
///   "expires_at": 1767225600,
///   "scope": "read",
///   "token_type": "Bearer",
///   "client": "3f2a…"
/// }
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    path: Arc<PathBuf>,
}

impl FileStore {
    /// A store at `path`. The file need not exist yet; its directory must.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: Arc::new(path.into()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let path = Arc::clone(&self.path);
        let result = tokio::task::spawn_blocking(move || f(&path))
            .await
            .map_err(|_| Error::Aborted)?;
        result.map_err(|e| Error::Store(StoreError::io(what, &self.path, e)))
    }
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    /// Seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
    /// Which client the tokens belong to ([`StoredToken::client`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
}

impl Drop for FileFormat {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

impl TokenStore for FileStore {
    async fn load(&self) -> Result<Option<StoredToken>, Error> {
        let bytes = self
            .blocking("read", |path| match std::fs::read(path) {
                Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let invalid = |reason: &str| Error::Store(StoreError::invalid(&self.path, reason));
        let file: FileFormat = serde_json::from_slice(&bytes).map_err(|e| {
            invalid(&format!(
                "not a token file (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if file.version != FORMAT_VERSION {
            return Err(invalid(&format!(
                "format version {} (this crate reads version {FORMAT_VERSION})",
                file.version
            )));
        }
        let mut token = StoredToken::new();
        if let Some(rt) = &file.refresh_token {
            token = token.with_refresh_token(rt.as_str());
        }
        if let Some(at) = &file.access_token {
            let expires_at = file
                .expires_at
                .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
            token = token.with_access_token(at.as_str(), expires_at);
        }
        if let Some(scope) = &file.scope {
            token = token.with_scope(scope.clone());
        }
        if let Some(t) = &file.token_type {
            token = token.with_token_type(t.clone());
        }
        if let Some(client) = &file.client {
            token = token.with_client(client.clone());
        }
        Ok(Some(token))
    }

    async fn save(&self, token: &StoredToken) -> Result<(), Error> {
        let file = FileFormat {
            version: FORMAT_VERSION,
            refresh_token: token.refresh_token().map(|t| t.secret().to_owned()),
            access_token: token.access_token().map(|t| t.secret().to_owned()),
            expires_at: token
                .expires_at()
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            scope: token.scope().map(str::to_owned),
            token_type: token.token_type().map(str::to_owned),
            client: token.client().map(str::to_owned),
        };
        let mut json = Zeroizing::new(Vec::with_capacity(512));
        serde_json::to_writer_pretty(&mut *json, &file).map_err(|_| {
            Error::Store(StoreError::invalid(&self.path, "cannot encode the token"))
        })?;
        json.push(b'\n');
        self.blocking("write", move |path| write_atomically(path, &json))
            .await
    }

    async fn lock(&self) -> Result<Option<StoreLock>, Error> {
        let file = self
            .blocking("open the lock file for", |path| {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).truncate(false).write(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                options.open(lock_path(path))
            })
            .await?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => return Ok(Some(StoreLock::new(file))),
                Err(fs4::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err(fs4::TryLockError::WouldBlock) => {
                    let held = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("another process held it for {} s", LOCK_WAIT.as_secs()),
                    );
                    return Err(Error::Store(StoreError::io("lock", &self.path, held)));
                }
                Err(fs4::TryLockError::Error(e)) => {
                    return Err(Error::Store(StoreError::io("lock", &self.path, e)));
                }
            }
        }
    }

    async fn clear(&self) -> Result<(), Error> {
        self.blocking("remove", |path| match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

/// The file whose advisory lock stands for the store's: not the store's own file, which each
/// save replaces with a new one.
fn lock_path(path: &Path) -> PathBuf {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

/// Writes `bytes` to `path` so that `path` holds either its old content or all of `bytes`.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // tempfile creates the file with mode 0600 on Unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tower-bearer-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever the file holds loads as a state or fails with `Error::Store`, never a
        /// panic: arbitrary bytes, and token files with any values, the expiry included.
        #[test]
        fn arbitrary_files_load_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            expires_at in proptest::num::u64::ANY,
            version in proptest::num::u32::ANY,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tokens.json");
            let store = FileStore::new(&path);
            let shaped = serde_json::json!({
                "version": version,
                "refresh_token": "rt",
                "access_token": "at",
                "expires_at": expires_at,
            });
            for content in [bytes, shaped.to_string().into_bytes()] {
                std::fs::write(&path, &content).unwrap();
                match runtime.block_on(store.load()) {
                    Ok(_) | Err(Error::Store(_)) => {}
                    Err(other) => proptest::prop_assert!(false, "{other:?}"),
                }
            }
        }
    }

    fn sample() -> StoredToken {
        StoredToken::new()
            .with_refresh_token("rt-SECRET")
            .with_access_token(
                "at-SECRET",
                Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            )
            .with_scope("read")
            .with_token_type("Bearer")
    }

    /// The lock keeps a second holder out (another open file, as another process would have)
    /// until the first lets go, and a waiter gives up after `LOCK_WAIT` with a store error.
    #[tokio::test(start_paused = true)]
    async fn a_held_lock_is_waited_for_and_given_up_after_lock_wait() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("tokens.json"));
        let held = store.lock().await.unwrap().expect("a file store is shared");
        let started = tokio::time::Instant::now();
        let err = store.lock().await.unwrap_err();
        assert!(
            matches!(&err, Error::Store(e) if e.io_error().is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)),
            "{err:?}"
        );
        assert!(started.elapsed() >= LOCK_WAIT);
        assert!(started.elapsed() < LOCK_WAIT + Duration::from_secs(1));
        drop(held);
        assert!(store.lock().await.unwrap().is_some(), "free once dropped");
    }

    #[tokio::test]
    async fn round_trips_and_versions_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("t.json"));
        assert_eq!(store.load().await.unwrap(), None);
        store.save(&sample()).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(sample()));
        let raw = std::fs::read_to_string(store.path()).unwrap();
        assert!(raw.contains("\"version\": 1"), "{raw}");
        store.clear().await.unwrap();
        assert_eq!(store.load().await.unwrap(), None);
        store.clear().await.unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_private_and_no_temporary_file_is_left() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("t.json"));
        store.save(&sample()).await.unwrap();
        store.save(&sample().with_scope("write")).await.unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["t.json"]);
    }

    #[tokio::test]
    async fn unreadable_files_are_typed_errors_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"{"version": 9, "refresh_token": "rt-SECRET"}"#).unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{err:?}");
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(!format!("{err} {err:?}").contains("SECRET"));

        std::fs::write(&path, "refresh_token=rt-SECRET").unwrap();
        let err = FileStore::new(&path).load().await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("SECRET"), "{err}");
    }

    #[tokio::test]
    async fn a_save_that_cannot_be_written_is_an_error() {
        let store = FileStore::new("/nonexistent-dir-for-tower-bearer/t.json");
        let err = store.save(&sample()).await.unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{err:?}");
        assert!(err.to_string().contains("write"), "{err}");
    }

    /// Readers running while the file is rewritten over and over see the old state or the new
    /// one, never a torn or empty file: the write goes to a temporary file renamed over the old.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_see_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("t.json"));
        // Large enough that a write in place would be seen half done.
        let a = sample().with_scope("a".repeat(64 * 1024));
        let b = sample().with_scope("b".repeat(64 * 1024));
        store.save(&a).await.unwrap();
        let writer = {
            let (store, a, b) = (store.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                for i in 0..200 {
                    store.save(if i % 2 == 0 { &b } else { &a }).await.unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            let loaded = store.load().await.unwrap().expect("never missing");
            assert!(loaded == a || loaded == b, "a torn read");
            reads += 1;
        }
        writer.await.unwrap();
        assert!(reads > 0);
    }
}
