//! What the three baselines share: the body of a consume they read, and
//! the server they run it in.

#![forbid(unsafe_code)]

use axum::Router;
use axum::handler::Handler;
use axum::routing::post;
use serde::Deserialize;

/// `{"user_id", "kind"}`: what each baseline reads of a consume.
#[derive(Deserialize)]
pub struct Body {
    pub user_id: String,
    pub kind: String,
}

/// Serves `POST /v1/consume` with `handler` on 127.0.0.1:`port`, until
/// the process is stopped.
pub async fn serve<H, T, S>(port: u16, handler: H, state: S)
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let app = Router::new()
        .route("/v1/consume", post(handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}
