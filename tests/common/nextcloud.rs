//! A stand-in Nextcloud for ExApp mode: an HTTP server on 127.0.0.1 that answers what ycord asks
//! Nextcloud, as real Nextcloud (AppAPI + the dav app's WebDAV SEARCH) answers it.
//!
//! - Every request must carry AppAPI authentication: `EX-APP-ID` (the app id), `EX-APP-VERSION`,
//!   `AA-VERSION` and `AUTHORIZATION-APP-API` = base64("<uid>:<app secret>"); else 401.
//! - `SEARCH /remote.php/dav/` with a `d:basicsearch` on `oc:fileid` in the scope `/files/<uid>`
//!   answers a 207 multistatus with one `d:response` per file of that id the user can see (see
//!   [`StandIn::grant`]), formatted as sabre/dav + SearchDAV format it.
//! - `PUT /ocs/v1.php/apps/app_api/ex-app/status` takes `{"progress": N}` / `{"error": "..."}` and,
//!   on progress 100 once [`StandIn::set_app`] was called, first calls the app back
//!   (`GET /heartbeat`, then `PUT /enabled?enabled=1`) as AppAPI does.
//!
//! The SEARCH body is parsed with a small namespace-aware XML reader: only the query shape ycord
//! sends is supported (anything else is answered 400), so a wrong request fails.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long [`StandIn::wait_for_progress`] waits before it fails the test.
const WAIT: Duration = Duration::from_secs(15);
/// Bodies larger than this are refused with 413.
const MAX_BODY: usize = 1 << 20;
/// How deep the SEARCH body's elements may nest (the reader is recursive).
const MAX_DEPTH: usize = 64;
/// The AppAPI version the stand-in claims in the `AA-VERSION` header of its callbacks.
const AA_VERSION: &str = "5.0.2";
/// The OCS route an ExApp reports its initialisation progress to.
const STATUS_PATH: &str = "/ocs/v1.php/apps/app_api/ex-app/status";

const NS_DAV: &str = "DAV:";
const NS_OC: &str = "http://owncloud.org/ns";
const NS_NC: &str = "http://nextcloud.org/ns";
const NS_SABRE: &str = "http://sabredav.org/ns";
/// The namespaces sabre/dav declares on every multistatus Nextcloud writes, in its order.
const MULTISTATUS_OPEN: &str = r#"<d:multistatus xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns" xmlns:oc="http://owncloud.org/ns" xmlns:nc="http://nextcloud.org/ns""#;

/// How the stand-in misbehaves (see [`StandIn::set_failure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Every request is answered with this status (and a short plain-text body).
    Status(u16),
    /// Every request is accepted and its body read, but never answered.
    Hang,
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// Path with the query, e.g. `/remote.php/dav/` or `/ocs/v1.php/...?format=json`.
    pub path: String,
    pub headers: HeaderMap,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
    /// The AppAPI-authenticated uid (`Some("")` for an app-level request without a user); `None`
    /// if the AppAPI headers were missing or wrong.
    pub user: Option<String>,
    /// The status answered; 0 while not answered yet, and for ever under [`Failure::Hang`].
    pub status: u16,
}

impl Call {
    /// The `progress` of a status call's JSON body, if it has one.
    pub fn progress(&self) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        value.get("progress")?.as_u64()
    }
}

#[derive(Clone, Debug)]
struct Grant {
    permissions: String,
    /// Path below the user's home, e.g. `Documents/file-42.md`.
    path: String,
    etag: String,
}

struct State {
    app_id: String,
    app_secret: String,
    grants: HashMap<(String, u64), Grant>,
    failure: Option<Failure>,
    app_url: Option<String>,
    calls: Vec<Call>,
    searches: HashMap<(String, u64), usize>,
    callbacks: Vec<(String, u16)>,
    etags_made: u64,
}

type Shared = Arc<Mutex<State>>;

/// A stand-in Nextcloud running in this process; its server task is aborted when dropped.
pub struct StandIn {
    state: Shared,
    port: u16,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts a stand-in on 127.0.0.1 (a free port) that knows one ExApp, `app_id`, whose shared
    /// secret is `app_secret`.
    pub async fn start(app_id: &str, app_secret: &str) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in Nextcloud");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(State {
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
            grants: HashMap::new(),
            failure: None,
            app_url: None,
            calls: Vec::new(),
            searches: HashMap::new(),
            callbacks: Vec::new(),
            etags_made: 0,
        }));
        let task = tokio::spawn(serve(listener, state.clone()));
        StandIn { state, port, task }
    }

    /// Puts `config` in ExApp mode as this stand-in's app, asking it about permissions.
    pub fn configure(&self, config: &mut ycord::ServeConfig) {
        let state = self.state.lock().unwrap();
        config.exapp.app_id = Some(state.app_id.clone());
        config.exapp.app_secret = Some(state.app_secret.clone());
        config.exapp.nextcloud_url = Some(self.url());
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Lets `user` see file `file_id` with these Nextcloud permissions (e.g. `RGDNVW` for a file
    /// the user may write, `RGDNV` for a read-only share), at `Documents/file-<id>.md` in their
    /// home. Replaces any earlier grant of that file to that user, with a new etag.
    pub fn grant(&self, user: &str, file_id: u64, permissions: &str) {
        self.grant_at(
            user,
            file_id,
            permissions,
            &format!("Documents/file-{file_id}.md"),
        );
    }

    /// [`grant`](Self::grant) at a chosen path below the user's home (e.g. `Notes/Readme.md`).
    pub fn grant_at(&self, user: &str, file_id: u64, permissions: &str, path: &str) {
        let mut state = self.state.lock().unwrap();
        state.etags_made += 1;
        // Nextcloud's etags are 13 hex digits (uniqid()).
        let etag = format!(
            "{:013x}",
            0x6750_0000_0000_u64 + state.etags_made * 0x1_0001
        );
        let grant = Grant {
            permissions: permissions.to_owned(),
            path: path.trim_start_matches('/').to_owned(),
            etag,
        };
        state.grants.insert((user.to_owned(), file_id), grant);
    }

    /// Takes back `user`'s access to `file_id`: SEARCHes find nothing for it any more.
    pub fn revoke(&self, user: &str, file_id: u64) {
        let mut state = self.state.lock().unwrap();
        state.grants.remove(&(user.to_owned(), file_id));
    }

    /// Makes every following request fail this way; `None` answers normally again.
    pub fn set_failure(&self, failure: Option<Failure>) {
        self.state.lock().unwrap().failure = failure;
    }

    /// The app's base URL (e.g. `http://127.0.0.1:PORT`): from now on a status call with progress
    /// 100 calls the app back (`GET /heartbeat`, then `PUT /enabled?enabled=1`) before answering.
    pub fn set_app(&self, app_url: &str) {
        self.state.lock().unwrap().app_url = Some(app_url.trim_end_matches('/').to_owned());
    }

    /// Every request received, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// How many well-formed SEARCHes `user` (the authenticated uid) made for `file_id`.
    pub fn searches(&self, user: &str, file_id: u64) -> usize {
        let state = self.state.lock().unwrap();
        state
            .searches
            .get(&(user.to_owned(), file_id))
            .copied()
            .unwrap_or(0)
    }

    /// Waits until a status call with this progress has been answered (after its callbacks, if
    /// any) and returns it; panics after 15 s.
    pub async fn wait_for_progress(&self, progress: u64) -> Call {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self.calls().into_iter().find(|call| {
                call.status != 0
                    && call.method == "PUT"
                    && path_only(&call.path) == STATUS_PATH
                    && call.progress() == Some(progress)
            });
            if let Some(call) = found {
                return call;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no status call with progress {progress} within {WAIT:?}; calls: {:#?}",
                    self.calls()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The callbacks made to the app: (path with query, status answered; 0 if no answer).
    pub fn callbacks(&self) -> Vec<(String, u16)> {
        self.state.lock().unwrap().callbacks.clone()
    }
}

/// The AppAPI headers Nextcloud puts on its requests to an ExApp, and an ExApp on its requests to
/// Nextcloud: `AA-VERSION`, `EX-APP-ID`, `EX-APP-VERSION` (`1.0.0`) and `AUTHORIZATION-APP-API` =
/// base64("<user>:<secret>") (`user` empty for app-level requests).
pub fn app_api_headers(app_id: &str, app_secret: &str, user: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).expect("header value"));
    };
    set("aa-version", AA_VERSION.to_owned());
    set("ex-app-id", app_id.to_owned());
    set("ex-app-version", "1.0.0".to_owned());
    set(
        "authorization-app-api",
        base64_encode(format!("{user}:{app_secret}").as_bytes()),
    );
    headers
}

async fn serve(listener: TcpListener, state: Shared) {
    // Connections live in this set so that aborting the server task also ends them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| handle(state.clone(), request));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// An answer: status, content type and body.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into(),
        }
    }

    fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer::new(status, "text/plain; charset=utf-8", body)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

async fn handle(state: Shared, request: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let (parts, mut incoming) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let mut bytes = Vec::new();
    let mut body_error = None;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut incoming).poll_frame(cx)).await
    {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                    if bytes.len() > MAX_BODY {
                        body_error = Some(Answer::text(413, "body too large"));
                        break;
                    }
                }
            }
            Err(error) => {
                body_error = Some(Answer::text(400, format!("cannot read the body: {error}")));
                break;
            }
        }
    }
    let body = String::from_utf8_lossy(&bytes).into_owned();

    let (user, failure, index) = {
        let mut state = state.lock().unwrap();
        let user = authenticate(&state, &parts.headers);
        state.calls.push(Call {
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            user: user.clone(),
            status: 0,
        });
        (user, state.failure.clone(), state.calls.len() - 1)
    };

    let answer = match (failure, body_error) {
        (Some(Failure::Hang), _) => std::future::pending::<Answer>().await,
        (Some(Failure::Status(status)), _) => {
            Answer::text(status, format!("stand-in failure: {status}"))
        }
        (None, Some(answer)) => answer,
        (None, None) => route(&state, &parts.method, &path, &parts.headers, user, &body).await,
    };

    state.lock().unwrap().calls[index].status = answer.status;
    let mut response = Response::new(answer.body);
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// AppAPI authentication: the uid before the first ':' of the decoded `AUTHORIZATION-APP-API`,
/// if the app id and secret match and the version headers are there.
fn authenticate(state: &State, headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if header("EX-APP-ID")? != state.app_id {
        return None;
    }
    if header("EX-APP-VERSION")?.is_empty() || header("AA-VERSION")?.is_empty() {
        return None;
    }
    let decoded = base64_decode(header("AUTHORIZATION-APP-API")?.trim())?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, secret) = decoded.split_once(':')?;
    (secret == state.app_secret).then(|| user.to_owned())
}

fn path_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(path, _)| path)
}

async fn route(
    state: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    user: Option<String>,
    body: &str,
) -> Answer {
    let only = path_only(path);
    if only == "/remote.php/dav" || only.starts_with("/remote.php/dav/") {
        let Some(user) = user else {
            return sabre_error(
                401,
                "Sabre\\DAV\\Exception\\NotAuthenticated",
                "No public access to this resource., AppAPI authentication failed",
            )
            .header(
                "www-authenticate",
                r#"Basic realm="Nextcloud", charset="UTF-8""#,
            );
        };
        if method.as_str() != "SEARCH" || (only != "/remote.php/dav" && only != "/remote.php/dav/")
        {
            return sabre_error(
                501,
                "Sabre\\DAV\\Exception\\NotImplemented",
                &format!(
                    "There was no plugin in the system that was willing to handle this {method} method."
                ),
            );
        }
        return search(state, headers, &user, body);
    }
    if only == STATUS_PATH && method == Method::PUT {
        return status(state, path, headers, user, body).await;
    }
    Answer::text(404, "not found")
}

fn sabre_error(status: u16, exception: &str, message: &str) -> Answer {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:error xmlns:d=\"DAV:\" xmlns:s=\"{NS_SABRE}\">\n  <s:exception>{}</s:exception>\n  <s:message>{}</s:message>\n</d:error>\n",
        xml_escape(exception),
        xml_escape(message)
    );
    Answer::new(status, "application/xml; charset=utf-8", body)
}

/// `SEARCH /remote.php/dav/` as Nextcloud's dav app (SearchDAV's SearchPlugin/SearchHandler and
/// FileSearchBackend) answers it, for the one query shape ycord sends.
fn search(state: &Shared, headers: &HeaderMap, user: &str, body: &str) -> Answer {
    // SearchPlugin::searchHandler: anything but an XML body is left to sabre, which has no other
    // SEARCH handler: 501.
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !content_type.contains("text/xml") && !content_type.contains("application/xml") {
        return sabre_error(
            501,
            "Sabre\\DAV\\Exception\\NotImplemented",
            "There was no plugin in the system that was willing to handle this SEARCH method.",
        );
    }
    let query = match parse_query(body) {
        Ok(query) => query,
        Err(message) => return Answer::text(400, message),
    };
    let grant = {
        let mut state = state.lock().unwrap();
        *state
            .searches
            .entry((user.to_owned(), query.file_id))
            .or_insert(0) += 1;
        state.grants.get(&(user.to_owned(), query.file_id)).cloned()
    };
    if query.scope_user != user {
        // Another user's /files/<uid> is a sabre SimpleCollection, not a Directory: the backend
        // throws InvalidArgumentException, which sabre answers 500.
        return sabre_error(
            500,
            "InvalidArgumentException",
            "Search is only supported on directories",
        );
    }
    let mut xml = String::from("<?xml version=\"1.0\"?>\n");
    xml.push_str(MULTISTATUS_OPEN);
    match grant {
        None => xml.push_str("/>\n"),
        Some(grant) => {
            xml.push('>');
            let href = format!(
                "/remote.php/dav/files/{}/{}",
                encode_path(user),
                encode_path(&grant.path)
            );
            xml.push_str(&format!(
                "<d:response><d:href>{}</d:href>",
                xml_escape(&href)
            ));
            let mut found = String::new();
            let mut missing = String::new();
            for (ns, name) in &query.select {
                let value = match (ns.as_str(), name.as_str()) {
                    (NS_OC, "fileid") => Some(query.file_id.to_string()),
                    (NS_OC, "permissions") => Some(grant.permissions.clone()),
                    (NS_DAV, "getetag") => Some(format!("\"{}\"", grant.etag)),
                    _ => None,
                };
                let (open, close) = qualified(ns, name);
                match value {
                    Some(value) => {
                        found.push_str(&format!("<{open}>{}</{close}>", xml_escape(&value)))
                    }
                    None => missing.push_str(&format!("<{open}/>")),
                }
            }
            if !found.is_empty() {
                xml.push_str(&format!(
                    "<d:propstat><d:prop>{found}</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>"
                ));
            }
            if !missing.is_empty() {
                xml.push_str(&format!(
                    "<d:propstat><d:prop>{missing}</d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat>"
                ));
            }
            xml.push_str("</d:response></d:multistatus>\n");
        }
    }
    // SearchHandler::handleSearchRequest sets exactly this header, quotes included.
    Answer::new(207, "application/xml; charset=\"utf-8\"", xml)
}

/// The element name as sabre writes it: the known prefixes, else a declared `x1` prefix.
fn qualified(ns: &str, name: &str) -> (String, String) {
    let prefix = match ns {
        NS_DAV => "d",
        NS_OC => "oc",
        NS_NC => "nc",
        NS_SABRE => "s",
        _ => {
            return (
                format!("x1:{name} xmlns:x1=\"{}\"", xml_escape(ns)),
                format!("x1:{name}"),
            );
        }
    };
    (format!("{prefix}:{name}"), format!("{prefix}:{name}"))
}

/// What the SEARCH asked: the selected properties (namespace, local name), the scope's uid and
/// the file id of the `d:eq` on `oc:fileid`.
struct Query {
    select: Vec<(String, String)>,
    scope_user: String,
    file_id: u64,
}

fn parse_query(body: &str) -> Result<Query, String> {
    let root = parse_xml(body).map_err(|error| format!("Parse error: {error}"))?;
    if !root.is(NS_DAV, "searchrequest") {
        return Err(format!(
            "Unexpected document type: {{{}}}{} for this Content-Type, expected {{DAV:}}searchrequest",
            root.ns, root.name
        ));
    }
    let basic = root
        .only_child(NS_DAV, "basicsearch")
        .ok_or("Unexpected xml content for search request, expected basicsearch")?;
    let select = basic
        .only_child(NS_DAV, "select")
        .ok_or("Parse error: Missing {DAV:}select from {DAV:}basicsearch")?;
    let props = select
        .only_child(NS_DAV, "prop")
        .ok_or("{DAV:}select must hold one {DAV:}prop")?;
    let select: Vec<(String, String)> = props
        .children
        .iter()
        .map(|child| (child.ns.clone(), child.name.clone()))
        .collect();
    if select.is_empty() {
        return Err("Parse error: Missing {DAV:}select from {DAV:}basicsearch".to_owned());
    }

    let from = basic
        .only_child(NS_DAV, "from")
        .ok_or("{DAV:}basicsearch needs one {DAV:}from")?;
    let scope = from
        .only_child(NS_DAV, "scope")
        .ok_or("stand-in: {DAV:}from must hold exactly one {DAV:}scope")?;
    let href = scope
        .only_child(NS_DAV, "href")
        .ok_or("{DAV:}scope needs one {DAV:}href")?
        .text
        .trim()
        .to_owned();
    let depth = scope
        .only_child(NS_DAV, "depth")
        .ok_or("{DAV:}scope needs one {DAV:}depth")?
        .text
        .trim()
        .to_owned();
    if depth != "infinity" {
        return Err(format!("stand-in: expected depth infinity, got {depth:?}"));
    }
    let scope_user = href
        .strip_prefix("/files/")
        .map(|rest| rest.strip_suffix('/').unwrap_or(rest))
        .filter(|user| !user.is_empty() && !user.contains('/'))
        .ok_or_else(|| format!("stand-in: expected the scope /files/<uid>, got {href:?}"))?
        .to_owned();

    let where_ = basic
        .only_child(NS_DAV, "where")
        .ok_or("stand-in: {DAV:}basicsearch needs one {DAV:}where")?;
    let [eq] = where_.children.as_slice() else {
        return Err("stand-in: {DAV:}where must hold exactly one {DAV:}eq".to_owned());
    };
    if !eq.is(NS_DAV, "eq") {
        return Err(format!(
            "stand-in: expected {{DAV:}}eq in {{DAV:}}where, got {{{}}}{}",
            eq.ns, eq.name
        ));
    }
    let [prop, literal] = eq.children.as_slice() else {
        return Err("stand-in: {DAV:}eq must hold a {DAV:}prop and a {DAV:}literal".to_owned());
    };
    let on_fileid = prop.is(NS_DAV, "prop")
        && matches!(prop.children.as_slice(), [only] if only.is(NS_OC, "fileid") && only.children.is_empty());
    if !on_fileid {
        return Err("stand-in: {DAV:}eq must compare {http://owncloud.org/ns}fileid".to_owned());
    }
    if !literal.is(NS_DAV, "literal") || !literal.children.is_empty() {
        return Err("Invalid argument 2 for eq operation, expected literal".to_owned());
    }
    let text = literal.text.trim();
    let file_id = text
        .parse::<u64>()
        .ok()
        .filter(|_| text.bytes().all(|byte| byte.is_ascii_digit()))
        .ok_or_else(|| format!("stand-in: the fileid literal {text:?} is not a number"))?;

    Ok(Query {
        select,
        scope_user,
        file_id,
    })
}

/// `PUT /ocs/v1.php/apps/app_api/ex-app/status`.
async fn status(
    state: &Shared,
    path: &str,
    headers: &HeaderMap,
    user: Option<String>,
    body: &str,
) -> Answer {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let json = path.contains("format=json")
        || header("accept").is_some_and(|accept| accept.contains("application/json"));
    let authorized = user.is_some() && header("OCS-APIRequest") == Some("true");
    if !authorized {
        return ocs(json, 401, 997, "failure", "Current user is not logged in");
    }
    if !header("content-type").is_some_and(|value| value.starts_with("application/json")) {
        return ocs(json, 400, 400, "failure", "expected a JSON body");
    }
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(body)
    else {
        return ocs(json, 400, 400, "failure", "the body is not a JSON object");
    };
    let progress = match fields.get("progress") {
        None => None,
        Some(value) => match value.as_u64().filter(|progress| *progress <= 100) {
            Some(progress) => Some(progress),
            None => return ocs(json, 400, 400, "failure", "progress must be 0..=100"),
        },
    };
    let error = fields.get("error");
    if error.is_some_and(|error| !error.is_string()) || (progress.is_none() && error.is_none()) {
        return ocs(json, 400, 400, "failure", "expected progress or error");
    }
    if progress == Some(100) {
        let app = state.lock().unwrap().app_url.clone();
        if let Some(app) = app {
            let version = header("EX-APP-VERSION").unwrap_or("").to_owned();
            callbacks(state, &app, &version).await;
        }
    }
    ocs(json, 200, 100, "ok", "OK")
}

/// An OCS v1 answer: JSON if asked for (`format=json` or `Accept: application/json`), else XML.
fn ocs(json: bool, status: u16, code: u16, word: &str, message: &str) -> Answer {
    if json {
        let body = serde_json::json!({"ocs": {"meta": {
            "status": word, "statuscode": code, "message": message,
            "totalitems": "", "itemsperpage": ""
        }, "data": []}});
        Answer::new(status, "application/json; charset=utf-8", body.to_string())
    } else {
        let body = format!(
            "<?xml version=\"1.0\"?>\n<ocs>\n <meta>\n  <status>{word}</status>\n  <statuscode>{code}</statuscode>\n  <message>{}</message>\n  <totalitems></totalitems>\n  <itemsperpage></itemsperpage>\n </meta>\n <data/>\n</ocs>\n",
            xml_escape(message)
        );
        Answer::new(status, "text/xml; charset=UTF-8", body)
    }
}

/// What AppAPI does when an app reports progress 100: heartbeat, then enable it (signed, no user).
async fn callbacks(state: &Shared, app: &str, version: &str) {
    let (app_id, secret) = {
        let state = state.lock().unwrap();
        (state.app_id.clone(), state.app_secret.clone())
    };
    let heartbeat = [
        ("Accept", "application/json".to_owned()),
        ("Content-Type", "application/json".to_owned()),
    ];
    let status = http_call(app, "GET", "/heartbeat", &heartbeat).await;
    state
        .lock()
        .unwrap()
        .callbacks
        .push(("/heartbeat".to_owned(), status));
    if status != 200 {
        return;
    }
    let signed = [
        ("AA-VERSION", AA_VERSION.to_owned()),
        ("EX-APP-ID", app_id),
        ("EX-APP-VERSION", version.to_owned()),
        (
            "AUTHORIZATION-APP-API",
            base64_encode(format!(":{secret}").as_bytes()),
        ),
        ("Accept-Language", "en".to_owned()),
    ];
    let path = "/enabled?enabled=1";
    let status = http_call(app, "PUT", path, &signed).await;
    state
        .lock()
        .unwrap()
        .callbacks
        .push((path.to_owned(), status));
}

/// One HTTP/1.1 request without a body (`Connection: close`); the status, or 0 on any failure.
async fn http_call(base: &str, method: &str, path: &str, headers: &[(&str, String)]) -> u16 {
    let Some(rest) = base.strip_prefix("http://") else {
        return 0;
    };
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let target = if prefix.is_empty() {
        path.to_owned()
    } else {
        format!("/{}{path}", prefix.trim_end_matches('/'))
    };
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await.ok()?;
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        let mut buffer = [0_u8; 4096];
        // The status line is all that is needed; stop at the end of the headers.
        while !response.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.ok()?;
            if read == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..read]);
        }
        let text = String::from_utf8_lossy(&response);
        let line = text.lines().next()?;
        let mut words = line.split(' ');
        words.next().filter(|word| word.starts_with("HTTP/1."))?;
        words.next()?.parse::<u16>().ok()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// sabre/http's `encodePath`: everything but `A-Za-z0-9_-.~()/:@` is percent-encoded (lower-case hex).
fn encode_path(path: &str) -> String {
    let mut out = String::new();
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"_-.~()/:@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as PHP's `base64_encode`.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict standard base64 (padding required); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let padding = chunk.iter().rev().take_while(|byte| **byte == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut n = 0_u32;
        for (i, byte) in chunk[..4 - padding].iter().enumerate() {
            let value = BASE64.iter().position(|c| c == byte)? as u32;
            n |= value << (18 - 6 * i);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

/// An XML element with its namespace resolved; `text` is its character data (children's text
/// not included).
#[derive(Debug)]
struct Element {
    ns: String,
    name: String,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The child of that name if there is exactly one.
    fn only_child(&self, ns: &str, name: &str) -> Option<&Element> {
        let mut matching = self.children.iter().filter(|child| child.is(ns, name));
        let first = matching.next()?;
        matching.next().is_none().then_some(first)
    }
}

/// A small namespace-aware XML reader: elements, attributes (only `xmlns` ones matter), text,
/// entities, comments, CDATA and the XML declaration. No DTDs.
fn parse_xml(input: &str) -> Result<Element, String> {
    let mut reader = XmlReader {
        input,
        at: 0,
        scopes: Vec::new(),
    };
    reader.skip_misc()?;
    let root = reader.element()?;
    reader.skip_misc()?;
    if reader.at != input.len() {
        return Err("content after the root element".to_owned());
    }
    Ok(root)
}

struct XmlReader<'a> {
    input: &'a str,
    at: usize,
    /// One map of prefix -> namespace per open element ("" is the default namespace).
    scopes: Vec<HashMap<String, String>>,
}

impl<'a> XmlReader<'a> {
    fn rest(&self) -> &'a str {
        &self.input[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn skip_past(&mut self, end: &str) -> Result<(), String> {
        let found = self
            .rest()
            .find(end)
            .ok_or_else(|| format!("unterminated construct, expected {end:?}"))?;
        self.at += found + end.len();
        Ok(())
    }

    /// Whitespace, comments and processing instructions outside the root element.
    fn skip_misc(&mut self) -> Result<(), String> {
        loop {
            self.skip_space();
            if self.rest().starts_with("<?") {
                self.skip_past("?>")?;
            } else if self.rest().starts_with("<!--") {
                self.skip_past("-->")?;
            } else if self.rest().starts_with("<!") {
                return Err("DTDs are not supported".to_owned());
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let rest = self.rest();
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '>' | '='))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(format!("expected a name at byte {}", self.at));
        }
        self.at += end;
        Ok(rest[..end].to_owned())
    }

    fn resolve(&self, qualified: &str) -> Result<(String, String), String> {
        let (prefix, local) = qualified.split_once(':').unwrap_or(("", qualified));
        if local.is_empty() || local.contains(':') {
            return Err(format!("bad name {qualified:?}"));
        }
        let ns = self
            .scopes
            .iter()
            .rev()
            .find_map(|scope| scope.get(prefix))
            .cloned();
        match ns {
            Some(ns) => Ok((ns, local.to_owned())),
            None if prefix.is_empty() => Ok((String::new(), local.to_owned())),
            None => Err(format!("undeclared namespace prefix {prefix:?}")),
        }
    }

    fn element(&mut self) -> Result<Element, String> {
        if !self.rest().starts_with('<') {
            return Err(format!("expected an element at byte {}", self.at));
        }
        if self.scopes.len() >= MAX_DEPTH {
            return Err(format!("elements nested deeper than {MAX_DEPTH}"));
        }
        self.at += 1;
        let qualified = self.name()?;
        let mut scope = HashMap::new();
        let empty = loop {
            self.skip_space();
            if self.rest().starts_with("/>") {
                self.at += 2;
                break true;
            }
            if self.rest().starts_with('>') {
                self.at += 1;
                break false;
            }
            let attribute = self.name()?;
            self.skip_space();
            if !self.rest().starts_with('=') {
                return Err(format!("attribute {attribute:?} has no value"));
            }
            self.at += 1;
            self.skip_space();
            let quote = self.rest().chars().next().ok_or("unexpected end")?;
            if quote != '"' && quote != '\'' {
                return Err("attribute values must be quoted".to_owned());
            }
            self.at += 1;
            let end = self.rest().find(quote).ok_or("unterminated attribute")?;
            let value = unescape(&self.rest()[..end])?;
            self.at += end + 1;
            if attribute == "xmlns" {
                scope.insert(String::new(), value);
            } else if let Some(prefix) = attribute.strip_prefix("xmlns:") {
                if value.is_empty() {
                    return Err(format!("empty namespace for prefix {prefix:?}"));
                }
                scope.insert(prefix.to_owned(), value);
            }
        };
        self.scopes.push(scope);
        let (ns, name) = self.resolve(&qualified)?;
        let mut element = Element {
            ns,
            name,
            children: Vec::new(),
            text: String::new(),
        };
        if !empty {
            loop {
                let rest = self.rest();
                if rest.is_empty() {
                    return Err(format!("unclosed element {qualified:?}"));
                } else if let Some(after) = rest.strip_prefix("</") {
                    let end = after.find('>').ok_or("unterminated end tag")?;
                    if after[..end].trim_end() != qualified {
                        return Err(format!(
                            "end tag {:?} does not close {qualified:?}",
                            &after[..end]
                        ));
                    }
                    self.at += 2 + end + 1;
                    break;
                } else if rest.starts_with("<!--") {
                    self.skip_past("-->")?;
                } else if let Some(after) = rest.strip_prefix("<![CDATA[") {
                    let end = after.find("]]>").ok_or("unterminated CDATA")?;
                    element.text.push_str(&after[..end]);
                    self.at += "<![CDATA[".len() + end + 3;
                } else if rest.starts_with("<?") {
                    self.skip_past("?>")?;
                } else if rest.starts_with("<!") {
                    return Err("DTDs are not supported".to_owned());
                } else if rest.starts_with('<') {
                    let child = self.element()?;
                    element.children.push(child);
                } else {
                    let end = rest.find('<').unwrap_or(rest.len());
                    element.text.push_str(&unescape(&rest[..end])?);
                    self.at += end;
                }
            }
        }
        self.scopes.pop();
        Ok(element)
    }
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(';').ok_or("unterminated entity")?;
        let entity = &after[..end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = entity.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if text.contains('<') {
        return Err("'<' in an attribute value".to_owned());
    }
    Ok(out)
}
