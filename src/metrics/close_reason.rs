//! Why a WebSocket tunnel closed (`portcullis_websocket_closed_total{reason}`).

/// Why a tunnel closed: the `reason` of `portcullis_websocket_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client sent the first Close frame, or went away.
    Client,
    /// The upstream did.
    Upstream,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// The token that opened it expired.
    TokenExpired,
    /// The token that opened it was revoked.
    Revoked,
    /// The end of `shutdown_grace`.
    Shutdown,
}

impl CloseReason {
    /// Every reason, for creating the metric's series at zero.
    pub(crate) const ALL: [CloseReason; 6] = [
        CloseReason::Client,
        CloseReason::Upstream,
        CloseReason::Idle,
        CloseReason::TokenExpired,
        CloseReason::Revoked,
        CloseReason::Shutdown,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Upstream => "upstream",
            CloseReason::Idle => "idle",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Revoked => "revoked",
            CloseReason::Shutdown => "shutdown",
        }
    }
}
