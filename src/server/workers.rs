//! The worker threads that serve HTTPS connections, one per core, and how a
//! new connection is handed to the least busy one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use super::https::serve_https;
use super::Gateway;

/// Threads that serve HTTPS connections, one per core, each on a
/// single-threaded runtime of its own. The accept loop hands each new
/// connection to the worker with the fewest open; from then on the
/// connection, its requests and their upstream exchanges stay on that thread.
/// (With one runtime shared by all threads, a task woken on one thread woke
/// another to steal it: a futex wake-up and a context switch every other
/// request.)
pub(super) struct Workers {
    queues: Vec<WorkerQueue>,
    /// Where the search for the least busy worker starts, so ties rotate.
    next: AtomicUsize,
}

struct WorkerQueue {
    /// Unbounded: what may be in it is bounded by the connection budget.
    handed: mpsc::UnboundedSender<Handed>,
    open: Arc<AtomicUsize>,
}

/// A new connection on its way to a worker: its socket (unregistered, so the
/// worker's runtime can take it), its client's address and its place.
type Handed = (std::net::TcpStream, SocketAddr, Place);

/// A connection's place in the connection budget and in its worker's count,
/// given back however the connection ends.
struct Place {
    open: Arc<AtomicUsize>,
    /// Shared with the WebSocket tunnels opened on the connection, which keep
    /// it when the connection hands its socket over.
    permit: Arc<OwnedSemaphorePermit>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// As many workers as the process may use cores; each ends when its stop
    /// sender is dropped.
    pub(super) fn start(
        gateway: &Arc<Gateway>,
        shutdown: &watch::Sender<bool>,
    ) -> std::io::Result<(Workers, Vec<oneshot::Sender<()>>)> {
        let count = crate::shard::worker_count();
        let mut queues = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (handed, connections) = mpsc::unbounded_channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let open = Arc::new(AtomicUsize::new(0));
            let work = serve_handed(connections, gateway.clone(), shutdown.subscribe());
            std::thread::Builder::new()
                .name(format!("portcullis-{index}"))
                .spawn(move || {
                    crate::shard::become_worker(index);
                    runtime.block_on(async move {
                        tokio::select! {
                            () = work => {}
                            _ = stopped => {}
                        }
                    })
                })?;
            queues.push(WorkerQueue { handed, open });
            stops.push(stop);
        }
        let workers = Workers {
            queues,
            next: AtomicUsize::new(0),
        };
        Ok((workers, stops))
    }

    /// Give a new connection to the worker with the fewest open.
    pub(super) fn hand(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = least_busy(self.queues.len(), start, |i| {
            self.queues[i].open.load(Ordering::Relaxed)
        });
        let Some(worker) = self.queues.get(chosen) else {
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return tracing::debug!(client = %peer, error = %e, "cannot hand the connection to a worker"),
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let place = Place {
            open: worker.open.clone(),
            permit: Arc::new(permit),
        };
        // A worker that has ended gives the place back as the message drops.
        let _ = worker.handed.send((stream, peer, place));
    }
}

/// The index below `count` with the fewest open connections; among equals,
/// the first from `start` on (wrapping), so that ties take turns.
fn least_busy(count: usize, start: usize, open: impl Fn(usize) -> usize) -> usize {
    let start = start % count.max(1);
    (start..count).chain(0..start).min_by_key(|&i| open(i)).unwrap_or(0)
}

/// A worker's life: serve each connection handed to it; once the accept loop
/// is gone, let the open ones finish (the worker is ended from outside).
async fn serve_handed(
    mut handed: mpsc::UnboundedReceiver<Handed>,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer, place)) = handed.recv().await {
        let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
        tokio::spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_https(gateway, stream, peer, shutdown, place.permit.clone()).await,
                Err(e) => tracing::debug!(client = %peer, error = %e, "worker cannot take the connection"),
            }
            drop(place);
        });
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::least_busy;

    #[test]
    fn a_new_connection_goes_to_the_worker_with_the_fewest_open() {
        let open = [5, 2, 7, 3];
        for start in 0..8 {
            assert_eq!(least_busy(open.len(), start, |i| open[i]), 1, "start {start}");
        }
    }

    #[test]
    fn workers_equally_busy_take_turns() {
        let open = [4, 4, 4];
        let chosen: Vec<usize> = (0..6).map(|start| least_busy(open.len(), start, |i| open[i])).collect();
        assert_eq!(chosen, [0, 1, 2, 0, 1, 2]);
        // Only the equals among the least busy take turns.
        let open = [1, 3, 1];
        let chosen: Vec<usize> = (0..3).map(|start| least_busy(open.len(), start, |i| open[i])).collect();
        assert_eq!(chosen, [0, 2, 2]);
    }
}
