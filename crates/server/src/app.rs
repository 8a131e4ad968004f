//! The router and its layers: request IDs, tracing, timeouts, body limit, security headers and the
//! error fallback, in one chain.

use crate::error::{BodyLimit, panic_response, problem_fallback};
use crate::oauth;
use crate::pages::APP_CSS;
use crate::routes::{
    audit, catalog_api, clerk, counter, dev, download, health, home, login, party_records,
    passkeys, usage,
};
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Content Security Policy: only our own origin, no inline code, never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The site's policy with `form-action` widened to `origin` as well (pages whose answer redirects
/// to an online service).
pub fn csp_with_form_action(origin: &str) -> String {
    CSP.replace(
        "form-action 'self'",
        &format!("form-action 'self' {origin}"),
    )
}

/// Builds the whole application for `state`.
pub fn router(state: AppState) -> Router {
    let settings = state.settings().clone();
    let limit = settings.http.body_limit_bytes;
    let tls = settings.tls.is_some();

    let api = Router::new()
        .route("/datasets", get(catalog_api::list_datasets))
        .route("/datasets/{id}", get(catalog_api::get_dataset))
        .route("/services", get(catalog_api::list_services))
        .route("/services/{id}", get(catalog_api::get_service))
        .route("/agencies", get(catalog_api::list_agencies))
        .route("/categories", get(catalog_api::list_categories))
        .route("/selection", post(catalog_api::selection))
        .route(
            "/audit/tree-head",
            get(health::latest_tree_head).post(audit::issue_tree_head),
        )
        .route("/audit/tree-heads/{size}", get(audit::tree_head_at))
        .route("/audit/proofs/inclusion", get(audit::inclusion_proof))
        .route("/audit/proofs/consistency", get(audit::consistency_proof))
        .route("/audit/events/{seq}/receipt", get(audit::receipt_for_event))
        .route(
            "/transfers/{transfer_id}/receipts/{kind}",
            get(audit::receipt),
        )
        .route("/records/service", post(party_records::service))
        .route("/records/agency", post(party_records::agency))
        .route("/session", get(login::session_json))
        .route(
            "/transfers/{transfer_id}/package",
            get(oauth::delivery::package),
        )
        .route("/openapi.yaml", get(oauth::flow::openapi_service))
        .route("/agency-api.yaml", get(oauth::flow::openapi_agency))
        .route("/admin/services", get(oauth::clients::list))
        .route(
            "/admin/services/{client_id}",
            get(oauth::clients::get_one)
                .put(oauth::clients::put)
                .delete(oauth::clients::delete),
        );
    // Developer endpoints bypass identity and consent: only when configured (demo).
    let api = if settings.dev.endpoints {
        api.route("/dev/fetches", post(dev::create_fetch))
            .route("/dev/transfers/{id}", get(dev::get_transfer))
            .route("/dev/transfers/{id}/package", get(dev::take))
    } else {
        api
    };

    let headers = ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
        ))
        .into_inner();
    let hsts = SetResponseHeaderLayer::overriding(
        header::STRICT_TRANSPORT_SECURITY,
        tls.then(|| HeaderValue::from_static("max-age=63072000; includeSubDomains")),
    );

    let router = Router::new()
        .route("/", get(home::home))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::routes::metrics::metrics))
        .route("/.well-known/mydata/jwks.json", get(health::jwks))
        .route("/static/app.css", get(stylesheet))
        .route("/static/login.js", get(login_script))
        .route("/static/passkey.js", get(passkey_script))
        .route("/login/tw_fido/options", post(passkeys::sign_in_options))
        .route(
            "/account/passkeys",
            get(passkeys::list).post(passkeys::register),
        )
        .route(
            "/account/passkeys/options",
            post(passkeys::register_options),
        )
        .route("/account/passkeys/{id}/delete", post(passkeys::remove))
        .route("/login", get(login::choose))
        .route(
            "/login/first-use",
            get(login::first_use_form).post(login::first_use_submit),
        )
        .route(
            "/login/first-use/code",
            get(login::code_form).post(login::code_submit),
        )
        .route(
            "/login/{method}",
            get(login::method_form).post(login::submit),
        )
        .route("/login/{method}/challenge", post(login::challenge))
        .route(
            "/account/password",
            get(login::password_form).post(login::password_submit),
        )
        .route("/logout", post(login::logout))
        .route("/dev/outbox", get(login::outbox))
        // Counter verification: the person's side, then the clerk's.
        .route("/static/counter.js", get(counter::script))
        .route("/counter", get(counter::services))
        .route(
            "/counter/services/{id}",
            get(counter::service).post(counter::consent),
        )
        .route("/counter/transfers/{id}", get(counter::transfer))
        .route(
            "/counter/transfers/{id}/{file}",
            get(counter::barcode_image),
        )
        .route("/clerk", get(clerk::desk))
        .route(
            "/clerk/login",
            get(clerk::login_form).post(clerk::login_submit),
        )
        .route("/clerk/certificate", get(clerk::certificate))
        .route("/clerk/logout", post(clerk::logout))
        .route("/clerk/counter", post(clerk::choose_counter))
        .route("/clerk/scan", get(back_to_desk).post(clerk::scan))
        .route(
            "/clerk/passwords/{id}",
            get(clerk::password_form).post(clerk::password_submit),
        )
        .route("/clerk/transfers/{id}", get(clerk::data))
        .route("/clerk/transfers/{id}/package", post(clerk::package))
        .route(
            "/clerk/transfers/{id}/files/{dataset}/{file}",
            get(clerk::file),
        )
        .route("/clerk/supervisor", get(clerk::supervisor))
        .route("/static/download.js", get(download_script))
        .route("/static/consent.js", get(consent_script))
        .route("/download", get(download::choose).post(download::start))
        .route("/download/terms", get(download::terms))
        .route("/download/consent", get(download::consent_form))
        .route("/download/t/{id}", get(download::progress))
        .route("/download/t/{id}/status", get(download::status))
        .route("/download/t/{id}/preview", get(download::preview))
        .route("/download/t/{id}/package", get(download::package))
        .route(
            "/download/t/{id}/files/{dataset}/{file}",
            get(download::file),
        )
        .route("/download/t/{id}/delete", post(download::delete))
        .route("/records", get(usage::page))
        .route("/records.csv", get(usage::export_csv))
        .route("/records.json", get(usage::export_json))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::flow::metadata),
        )
        .route("/oauth/jwks.json", get(oauth::flow::jwks))
        .route("/oauth/par", post(oauth::flow::par))
        .route("/oauth/authorize", get(oauth::flow::authorize))
        .route("/oauth/token", post(oauth::flow::token))
        .route(
            "/oauth/consent/{id}",
            get(oauth::flow::consent_page).post(oauth::flow::consent_submit),
        )
        .route(
            "/oauth/consent/{id}/confirm",
            post(oauth::flow::confirm_submit),
        )
        .nest("/api/v1", api)
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
        .layer(DefaultBodyLimit::max(limit));

    // Innermost first (each `layer` call wraps what is above it): the body limit and timeout next to
    // the handlers, the error fallback around everything that can fail, a request ID before anything
    // logs.
    router
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(settings.http.request_timeout_secs)))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(problem_fallback))
        .layer(middleware::from_fn(crate::i18n::page_language))
        .layer(Extension(BodyLimit(limit)))
        .layer(hsts)
        .layer(headers)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            // The path only: query strings may carry search words a person typed.
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// `GET /clerk/scan`: the address a refused scan's page is shown at (a form post's answer), so
/// its language switch or a reload lands here; the counter page is where a scan starts.
async fn back_to_desk(uri: axum::http::Uri) -> axum::response::Redirect {
    match uri.query() {
        Some(q) => axum::response::Redirect::to(&format!("/clerk?{q}")),
        None => axum::response::Redirect::to("/clerk"),
    }
}

async fn login_script() -> impl IntoResponse {
    script(crate::pages::LOGIN_JS)
}

async fn passkey_script() -> impl IntoResponse {
    script(crate::pages::PASSKEY_JS)
}

async fn download_script() -> impl IntoResponse {
    script(crate::pages::DOWNLOAD_JS)
}

async fn consent_script() -> impl IntoResponse {
    script(crate::pages::CONSENT_JS)
}

/// A page script, cached an hour.
fn script(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        APP_CSS,
    )
}
