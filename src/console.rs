//! The admin console: static files compiled into the binary (built from `admin-console/` by
//! `npm ci && npm run build`, committed under `static/admin/` so `cargo build` alone works),
//! served at `/admin` on the gRPC port. The page talks grpc-web to the same server.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../static/admin/index.html");
const APP_JS: &str = include_str!("../static/admin/app.js");
const STYLE_CSS: &str = include_str!("../static/admin/style.css");
/// A file of our own, not `data:`: the CSP below allows images from 'self' only (`default-src`),
/// and Chromium reported the old `<link rel="icon" href="data:,">` as a violation on every load.
const FAVICON_SVG: &str = include_str!("../static/admin/favicon.svg");

/// The console's routes.
pub fn router() -> Router {
    Router::new()
        .route(
            "/admin",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/admin/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/admin/favicon.svg",
            get(|| async { page(FAVICON_SVG, "image/svg+xml") }),
        )
}

fn page(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page handles credentials: keep it out of frames and caches.
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}
