//! Callbacks on the life of a client's connection, as Go's provider offers them: a reconnect
//! listener and a dial-failure callback (say, to drop a cached token that the server refused).

use std::fmt;
use std::sync::Arc;

use super::Error;

/// A callback on a failed dial.
type DialFailureHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// Callbacks on the connection of a [`Client`](super::Client) (see [`ClientOptions::hooks`]).
/// They run on the client's driver task: keep them short and never block in them.
///
/// [`ClientOptions::hooks`]: super::ClientOptions::hooks
#[derive(Clone, Default)]
pub struct ConnectionHooks {
    on_reconnect: Option<Arc<dyn Fn() + Send + Sync>>,
    on_dial_failure: Option<DialFailureHook>,
}

impl fmt::Debug for ConnectionHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHooks")
            .field("on_reconnect", &self.on_reconnect.is_some())
            .field("on_dial_failure", &self.on_dial_failure.is_some())
            .finish()
    }
}

impl ConnectionHooks {
    /// Calls `listener` each time a new connection replaces a lost one (not for the first).
    pub fn on_reconnect(mut self, listener: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_reconnect = Some(Arc::new(listener));
        self
    }

    /// Calls `callback` with the error of each failed dial (unreachable server, refused token, …).
    pub fn on_dial_failure(mut self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_dial_failure = Some(Arc::new(callback));
        self
    }

    pub(crate) fn reconnected(&self) {
        if let Some(listener) = &self.on_reconnect {
            listener();
        }
    }

    pub(crate) fn dial_failed(&self, error: &Error) {
        if let Some(callback) = &self.on_dial_failure {
            callback(error);
        }
    }
}
