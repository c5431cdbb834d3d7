//! Hot reload: watches the policy directory and the key files it names, recompiles after a
//! change and swaps the whole policy set at once. A set that does not compile never takes
//! effect; the last good one keeps serving and the failure is reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::AppState;
use crate::policy::{PolicyOptions, compile_read, is_policy_file, read_sources, sources_revision};

/// Quiet time after the last file event before recompiling: editors and ConfigMap updates
/// write several files in a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What the last reload attempts found, for `/readyz`, metrics and `ListServices`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Unix milliseconds of the last reload that compiled (or of the initial load).
    pub last_success_millis: i64,
    /// Set while the newest files do not compile: their revision and every error.
    pub failure: Option<ReloadFailure>,
}

#[derive(Debug, Clone)]
pub struct ReloadFailure {
    /// Content hash of the policy files that failed.
    pub revision: Arc<str>,
    pub at_millis: i64,
    /// Each error as `file:line:col: message`.
    pub errors: Vec<String>,
}

impl ReloadFailure {
    fn now(revision: &Arc<str>, errors: &crate::policy::PolicyErrors) -> Self {
        Self {
            revision: revision.clone(),
            at_millis: unix_millis(),
            errors: errors.0.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new revision is active.
    Changed { from: Arc<str>, to: Arc<str> },
    /// The files compile to the active revision.
    Unchanged,
    /// The files do not compile; the active revision keeps serving.
    Failed { revision: Arc<str>, errors: usize },
}

impl ReloadResult {
    pub fn label(&self) -> &'static str {
        match self {
            ReloadResult::Changed { .. } => "success",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Failed { .. } => "failure",
        }
    }
}

pub(crate) fn unix_millis() -> i64 {
    crate::time::unix_millis(SystemTime::now())
}

impl AppState {
    /// Reads and compiles the policy directory; swaps the new set in if it compiles and
    /// differs from the active one. Decisions in flight finish on the set they started with.
    pub fn reload(&self, dir: &Path, options: &PolicyOptions) -> ReloadResult {
        let (sources, problems) = read_sources(dir);
        let result = match compile_read(dir, &sources, problems, options) {
            Ok(set) => {
                let active = self.policies();
                let mut status = self.reload_status.lock().unwrap_or_else(|p| p.into_inner());
                status.last_success_millis = unix_millis();
                status.failure = None;
                drop(status);
                if set.revision() == active.revision() {
                    ReloadResult::Unchanged
                } else {
                    let from = active.revision().clone();
                    let to = set.revision().clone();
                    self.metrics.set_policy(&to, set.services.len());
                    drop(active);
                    self.swap_policies(set);
                    self.keys.start_new(&self.metrics);
                    tracing::info!(from = %from, to = %to, "policies reloaded");
                    ReloadResult::Changed { from, to }
                }
            }
            Err(errors) => {
                let revision = sources_revision(&sources);
                for e in &errors.0 {
                    tracing::error!(revision = %revision, "policy reload failed: {e}");
                }
                let count = errors.0.len();
                let mut status = self.reload_status.lock().unwrap_or_else(|p| p.into_inner());
                status.failure = Some(ReloadFailure::now(&revision, &errors));
                ReloadResult::Failed {
                    revision,
                    errors: count,
                }
            }
        };
        self.metrics
            .count_reload(result.label(), self.reload_status().last_success_millis);
        result
    }

    /// Reads and compiles the shadow policy directory; swaps the new set in if it compiles.
    /// A failure is logged and kept in [`shadow_status`](Self::shadow_status); the last
    /// shadow set that compiled (or none) goes on, and the active set is never touched.
    pub fn reload_shadow(&self, dir: &Path, options: &PolicyOptions) -> ReloadResult {
        let (sources, problems) = read_sources(dir);
        let mut status = self.shadow_status.lock().unwrap_or_else(|p| p.into_inner());
        match compile_read(dir, &sources, problems, options) {
            Ok(set) => {
                status.last_success_millis = unix_millis();
                status.failure = None;
                let from = self.shadow.load().as_ref().map(|s| s.revision().clone());
                if from.as_ref() == Some(set.revision()) {
                    return ReloadResult::Unchanged;
                }
                let to = set.revision().clone();
                self.shadow.store(Some(Arc::new(set)));
                self.keys.start_new(&self.metrics);
                tracing::info!(to = %to, "shadow policies loaded");
                ReloadResult::Changed {
                    from: from.unwrap_or_else(|| "".into()),
                    to,
                }
            }
            Err(errors) => {
                let revision = sources_revision(&sources);
                for e in &errors.0 {
                    tracing::error!(revision = %revision, "shadow policies do not compile; the last good shadow set (if any) goes on: {e}");
                }
                status.failure = Some(ReloadFailure::now(&revision, &errors));
                ReloadResult::Failed {
                    revision,
                    errors: errors.0.len(),
                }
            }
        }
    }

    /// What the last loads of the shadow set found.
    pub fn shadow_status(&self) -> ReloadStatus {
        self.shadow_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The files the set in `slot` was compiled from (none for a shadow set not loaded).
    fn inputs_of(&self, slot: PolicySlot) -> Vec<PathBuf> {
        match slot {
            PolicySlot::Active => self.policies().inputs().to_vec(),
            PolicySlot::Shadow => (self.shadow.load().as_ref())
                .map(|s| s.inputs().to_vec())
                .unwrap_or_default(),
        }
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the watched files look like: a change means a reload is due. Follows symlinks, so
/// a swapped directory symlink (as Kubernetes ConfigMap volumes update) changes it.
fn fingerprint(dir: &Path, inputs: &[PathBuf]) -> Vec<(PathBuf, Option<(u64, SystemTime)>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| is_policy_file(p))
                .collect()
        })
        .unwrap_or_default();
    files.extend(inputs.iter().cloned());
    files.sort();
    files.dedup();
    let mut print: Vec<_> = files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(UNIX_EPOCH)));
            (p, meta)
        })
        .collect();
    print.push((std::fs::canonicalize(dir).unwrap_or_default(), None));
    print
}

/// The directories to watch: the policy directory (recursively: key files and Kubernetes'
/// `..data` live below it), its parent (the directory itself may be a swapped symlink) and
/// the directories of key files outside it.
fn watch_targets(dir: &Path, inputs: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    let mut targets = vec![(dir.to_path_buf(), RecursiveMode::Recursive)];
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        targets.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
    }
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for input in inputs {
        if let Some(parent) = input.parent() {
            let inside = std::fs::canonicalize(parent)
                .map(|p| p.starts_with(&canonical))
                .unwrap_or(false);
            if !inside && !targets.iter().any(|(t, _)| t == parent) {
                targets.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
            }
        }
    }
    targets
}

/// Which policy set a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySlot {
    /// The set that decides.
    Active,
    /// The set every request is also decided by, without effect (`--shadow-policies`).
    Shadow,
}

/// How a policy directory is watched.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub dir: PathBuf,
    pub slot: PolicySlot,
    pub options: PolicyOptions,
    /// File events (notify); when off, only SIGHUP and polling reload.
    pub events: bool,
    /// How often file metadata is compared, to catch what events miss; `None` for never.
    pub poll: Option<Duration>,
}

impl AppState {
    /// [`AppState::reload`] on a thread of its own at the lowest CPU priority: compiling a
    /// large policy set takes a core for a second, and decisions must not wait for it.
    pub async fn reload_in_background(
        self: &Arc<Self>,
        dir: &Path,
        options: &PolicyOptions,
    ) -> ReloadResult {
        self.reload_slot_in_background(PolicySlot::Active, dir, options)
            .await
    }

    /// [`reload_in_background`](Self::reload_in_background) for the set in `slot`.
    pub async fn reload_slot_in_background(
        self: &Arc<Self>,
        slot: PolicySlot,
        dir: &Path,
        options: &PolicyOptions,
    ) -> ReloadResult {
        let (state, dir, options) = (self.clone(), dir.to_path_buf(), options.clone());
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("policy-reload".into())
            .spawn(move || {
                lower_priority();
                // Fetch tasks for new remote key sets are started on the server's runtime.
                let _entered = runtime.as_ref().map(|r| r.enter());
                let _ = tx.send(match slot {
                    PolicySlot::Active => state.reload(&dir, &options),
                    PolicySlot::Shadow => state.reload_shadow(&dir, &options),
                });
            });
        let failed = |why: String| {
            tracing::error!("policy reload failed to run: {why}");
            ReloadResult::Failed {
                revision: "".into(),
                errors: 1,
            }
        };
        match spawned {
            Ok(_) => rx
                .await
                .unwrap_or_else(|_| failed("the reload thread panicked".into())),
            Err(e) => failed(e.to_string()),
        }
    }
}

/// Gives the calling thread the lowest scheduling priority (Linux: per-thread nice 19).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; failure only leaves the priority as is.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// Reloads on file events, on metadata changes seen by polling and on SIGHUP, until the
/// process ends.
pub async fn watch(state: Arc<AppState>, config: WatchConfig) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let make_watcher = |inputs: &[PathBuf]| -> Option<notify::RecommendedWatcher> {
        if !config.events {
            return None;
        }
        let tx = tx.clone();
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            }) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(
                        "cannot watch the policy files ({e}); relying on polling and SIGHUP"
                    );
                    return None;
                }
            };
        for (target, mode) in watch_targets(&config.dir, inputs) {
            if let Err(e) = watcher.watch(&target, mode) {
                tracing::warn!(path = %target.display(), "cannot watch: {e}");
            }
        }
        Some(watcher)
    };
    let mut inputs = state.inputs_of(config.slot);
    let mut _watcher = make_watcher(&inputs);
    let mut last_print = fingerprint(&config.dir, &inputs);
    let mut hangup = hangup_signal();
    let mut poll = config.poll.map(|p| {
        let mut interval = tokio::time::interval(p);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Debounce: wait until the burst of events is over.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            }
            () = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the policies");
            }
            _ = async { match poll.as_mut() { Some(i) => i.tick().await, None => std::future::pending().await } } => {
                if fingerprint(&config.dir, &inputs) == last_print {
                    continue;
                }
            }
        }
        let result = state
            .reload_slot_in_background(config.slot, &config.dir, &config.options)
            .await;
        let new_inputs = state.inputs_of(config.slot);
        if new_inputs != inputs {
            inputs = new_inputs;
            _watcher = make_watcher(&inputs);
        }
        last_print = fingerprint(&config.dir, &inputs);
        tracing::debug!(result = result.label(), "policy reload");
    }
}

/// SIGHUP, where there is one.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Completes on each SIGHUP; never where signals are unavailable.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.signal.as_mut()
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

fn hangup_signal() -> Hangup {
    Hangup {
        #[cfg(unix)]
        signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
    }
}
