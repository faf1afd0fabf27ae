//! The supervisor's Unix-socket service: accepts connections (at most
//! `max_connections` at once; more are refused and logged) and serves each
//! in its own task ([`conn`]), authorizing every call ([`auth`]). The
//! listening socket comes from systemd or is bound here ([`listen`]).

pub mod auth;
pub mod conn;
pub mod listen;

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use conn::Context;

/// Serves `listener` until `shutdown` completes.
pub async fn serve(listener: UnixListener, ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(ctx.config.file.max_connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                max_connections = ctx.config.file.max_connections,
                "connection refused: too many connections (raise max_connections)"
            );
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            conn::serve(stream, ctx).await;
            drop(slot);
        });
    }
}
