//! `reload: { watch: true }`: reload when `gateway.yaml` or a file it names
//! changes, as SIGHUP does. Directories are watched, not files: editors
//! replace a file by renaming a new one over it, and a Kubernetes ConfigMap
//! volume swaps a `..data` symlink, so the file itself never sees an event.
//! Events are debounced: the reload comes once nothing has changed for a second.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last change before reloading.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// A running watch; dropping it stops watching.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
    _debouncer: tokio::task::JoinHandle<()>,
}

/// Watch the directories of `files`; `reload` gets a message once changes settle.
pub fn start(files: &[PathBuf], reload: mpsc::Sender<()>) -> notify::Result<Watch> {
    let names: BTreeSet<PathBuf> = files.iter().filter_map(|f| f.file_name().map(PathBuf::from)).collect();
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        // One of our files, or a ConfigMap's `..data` / `..2026_...` swap.
        let ours = event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.contains(Path::new(n)) || n.to_str().is_some_and(|n| n.starts_with("..")))
        });
        if ours {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let debouncer = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait until a whole second passes without another change.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            if reload.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(Watch {
        _watcher: watcher,
        _debouncer: debouncer,
    })
}
