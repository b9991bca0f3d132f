//! Stage "shutdown": turns Ctrl-C / SIGINT / SIGTERM / SIGHUP (a dropped SSH session) into
//! one cancellation signal. The run
//! stops taking new items when it fires; a second signal exits at once (the store stays
//! consistent: SQLite rolls back an unfinished transaction, file stores are replaced by
//! rename only). Knows nothing of what it stops.

use tokio_util::sync::CancellationToken;

/// Exit code of an interrupted run (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Listens for Ctrl-C, SIGINT, SIGTERM and SIGHUP in the background: the first cancels `token`, the
/// second ends the process with exit code 130.
pub fn listen(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!(
            "stopping: no new checks; writing the answers already received (signal again to exit at once)"
        );
        token.cancel();
        wait_for_signal().await;
        // Registering a handler removed the default "die at once" behaviour; restore it.
        // Through the log writer, so a progress bar on screen is cleared first.
        tracing::error!("second signal: exiting now");
        crate::report::progress::clear_terminal();
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // Without handlers the default actions stay in place: still a clean enough stop.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        // A terminal that goes away (an SSH session dropped under a run by hand): the
        // answers received are written, as for SIGTERM.
        _ = hup.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
