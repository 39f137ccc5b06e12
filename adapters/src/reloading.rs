//! A value loaded from files and loaded again when they change, for settings that must rotate
//! without a restart (the server's TLS certificate, a JWKS document).
//!
//! [`Reloading::current`] looks at the files' modification times at most once per [`RELOAD_CHECK`];
//! when one changed, the value is loaded again. A load that fails (a file caught half written, a
//! broken renewal) is logged and the previous value stays in use, so a bad rotation never takes the
//! endpoint down; the next look tries again.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// How often, at most, watched files (a TLS certificate, a JWKS document) are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

type Loader<T, E> = Box<dyn Fn() -> Result<T, E> + Send + Sync>;

/// A value of type `T` read from `paths` by a loader (see the module docs).
pub(crate) struct Reloading<T, E> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T, E>,
    state: Mutex<Loaded<T>>,
}

struct Loaded<T> {
    value: Arc<T>,
    /// The files' modification times when they were last read.
    modified: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl<T, E: fmt::Display> Reloading<T, E> {
    /// Loads the value once (its error is the caller's) and watches `paths`. `what` names the value
    /// in logs ("TLS certificate").
    pub(crate) fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let modified = modification_times(&paths);
        let value = Arc::new(load()?);
        let state = Mutex::new(Loaded { value, modified, checked: Instant::now() });
        Ok(Self { what, paths, load: Box::new(load), state })
    }

    /// The current value, after loading it again if the files changed since the last look.
    pub(crate) fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let now = modification_times(&self.paths);
            if now != state.modified {
                match (self.load)() {
                    Ok(value) => {
                        tracing::info!(what = self.what, file = %self.paths[0].display(), "reloaded");
                        state.value = Arc::new(value);
                        state.modified = now;
                    }
                    Err(error) => {
                        tracing::warn!(what = self.what, %error, "not reloaded; the previous one stays in use")
                    }
                }
            }
        }
        state.value.clone()
    }
}

impl<T, E> fmt::Debug for Reloading<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn modification_times(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths.iter().map(|path| modified(path)).collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|metadata| metadata.modified()).ok()
}
