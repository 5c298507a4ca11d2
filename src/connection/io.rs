//! The I/O wrapper: every read and write that moves data is reported to the
//! connection's [`ConnState`]; over HTTP/2 the client's bytes also go through
//! the frame scanner.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frames::FrameScan;
use super::ConnState;

/// An I/O stream that reports reads and writes that move data to [`ConnState`].
pub struct Tracked<T> {
    inner: T,
    state: Arc<ConnState>,
    /// HTTP/2 only: where the client's bytes are, frame by frame.
    frames: Option<Box<FrameScan>>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        let frames = (!state.http1).then(|| Box::new(FrameScan::new()));
        Tracked { inner, state, frames }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            match &mut this.frames {
                None => this.state.on_read(),
                Some(frames) => {
                    let ended = frames.scan(&buf.filled()[before..]);
                    this.state.on_h2_read(frames.first_head_done(), frames.partial(), ended);
                }
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
