//! Per-file permissions, asked of Nextcloud as the user: which rooms are files, the WebDAV
//! SEARCH that says whether a user may read or write a file, and a short cache of the answers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use thiserror::Error;

use super::appapi::AppApiCredentials;

/// Longest Nextcloud may take to answer one permission question; then the client gets 503.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of a SEARCH answer read: one file matches, seen through a few shares at most.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Most SEARCHes in flight at once: a reconnect storm of editors must not become as many
/// concurrent PHP requests. Others wait for a slot, within the same [`LOOKUP_TIMEOUT`].
const MAX_CONCURRENT_LOOKUPS: usize = 16;

/// Most answers cached; a full cache drops its expired entries, then everything.
const MAX_CACHED: usize = 10_000;

const DAV: &[u8] = b"DAV:";
/// What a user id must have encoded to be one segment of a WebDAV path (ids may hold spaces).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');
const OWNCLOUD: &[u8] = b"http://owncloud.org/ns";

/// The Nextcloud file a room belongs to: `file:<fileId>` or `file:<type>/<fileId>`
/// (`file:text/42`); `None` for a room of any other shape.
pub fn file_of_room(room: &str) -> Option<u64> {
    let rest = room.strip_prefix("file:")?;
    let id = match rest.split_once('/') {
        Some((kind, id)) if is_kind(kind) => id,
        Some(_) => return None,
        None => rest,
    };
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// A room type such as `text`, `deck` or `whiteboard`.
fn is_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 32
        && kind
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// What Nextcloud lets a user do with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAccess {
    ReadWrite,
    ReadOnly,
    /// The user cannot see the file (or it does not exist).
    None,
}

/// Why Nextcloud gave no answer: the client is told 503, never 401 or 403, which HaRP counts
/// towards banning its address.
#[derive(Debug, Error)]
pub enum LookupError {
    #[error("Nextcloud did not answer within {LOOKUP_TIMEOUT:?}")]
    Timeout,
    #[error("Nextcloud is unreachable: {0}")]
    Unreachable(String),
    #[error("Nextcloud answered the permission SEARCH with HTTP {0}")]
    Status(u16),
    #[error("Nextcloud's SEARCH answer is not a WebDAV multistatus: {0}")]
    Malformed(String),
}

/// Asks Nextcloud, as the user, what they may do with files; caches answers for a while.
#[derive(Debug)]
pub struct Permissions {
    credentials: AppApiCredentials,
    /// `{NEXTCLOUD_URL}/remote.php/dav/`.
    search_url: String,
    client: reqwest::Client,
    slots: tokio::sync::Semaphore,
    cache_for: Duration,
    cache: Mutex<HashMap<(String, u64), (Instant, FileAccess)>>,
}

impl Permissions {
    pub fn new(credentials: AppApiCredentials, nextcloud_url: &str, cache_for: Duration) -> Self {
        Permissions {
            credentials,
            search_url: format!("{}/remote.php/dav/", nextcloud_url.trim_end_matches('/')),
            client: reqwest::Client::builder()
                .timeout(LOOKUP_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(MAX_CONCURRENT_LOOKUPS)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS),
            cache_for,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// What `user` may do with `file`: from the cache while fresh, else asked.
    pub async fn access(&self, user: &str, file: u64) -> Result<FileAccess, LookupError> {
        let key = (user.to_owned(), file);
        if let Some(&(at, access)) = self.cache().get(&key) {
            if at.elapsed() < self.cache_for {
                return Ok(access);
            }
        }
        self.refresh(user, file).await
    }

    /// Asks Nextcloud afresh (an open session's periodic check) and caches the answer.
    pub async fn refresh(&self, user: &str, file: u64) -> Result<FileAccess, LookupError> {
        let access = tokio::time::timeout(LOOKUP_TIMEOUT, async {
            let _slot = self.slots.acquire().await;
            self.search(user, file).await
        })
        .await
        .map_err(|_| LookupError::Timeout)??;
        if !self.cache_for.is_zero() {
            let mut cache = self.cache();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (at, _)| at.elapsed() < self.cache_for);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert((user.to_owned(), file), (Instant::now(), access));
        }
        Ok(access)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), (Instant, FileAccess)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn search(&self, user: &str, file: u64) -> Result<FileAccess, LookupError> {
        let method = http::Method::from_bytes(b"SEARCH").unwrap_or(http::Method::POST);
        let request = self
            .client
            .request(method, &self.search_url)
            .header("content-type", "text/xml; charset=utf-8")
            .body(search_body(user, file));
        let mut response = self
            .credentials
            .sign(request, user)
            .send()
            .await
            .map_err(send_error)?;
        let status = response.status().as_u16();
        if status == 404 {
            // No such user any more: nothing is visible to them.
            return Ok(FileAccess::None);
        }
        if status != 207 {
            return Err(LookupError::Status(status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(send_error)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(LookupError::Malformed("answer too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        parse_answer(&body, file)
    }
}

fn send_error(error: reqwest::Error) -> LookupError {
    if error.is_timeout() {
        LookupError::Timeout
    } else {
        LookupError::Unreachable(error.to_string())
    }
}

/// The WebDAV basicsearch for one file id in the user's home, selecting what decides access.
fn search_body(user: &str, file: u64) -> String {
    let home = percent_encoding::utf8_percent_encode(user, PATH_SEGMENT);
    let home = quick_xml::escape::escape(home.to_string()).into_owned();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<d:searchrequest xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">
 <d:basicsearch>
  <d:select><d:prop><oc:fileid/><oc:permissions/><d:getetag/></d:prop></d:select>
  <d:from><d:scope><d:href>/files/{home}</d:href><d:depth>infinity</d:depth></d:scope></d:from>
  <d:where><d:eq><d:prop><oc:fileid/></d:prop><d:literal>{file}</d:literal></d:eq></d:where>
  <d:orderby/>
 </d:basicsearch>
</d:searchrequest>
"#
    )
}

/// The access a multistatus grants: a `d:response` for the file whose `oc:permissions` holds
/// `W` is read-write; a response without `W` is read-only (a read-only share still carries
/// `D`, `N`, `V`, and `R` means re-shareable); no response is no access.
fn parse_answer(body: &[u8], file: u64) -> Result<FileAccess, LookupError> {
    let mut reader = quick_xml::NsReader::from_reader(body);
    let mut buffer = Vec::new();
    let malformed = |error: &dyn std::fmt::Display| LookupError::Malformed(error.to_string());
    let mut saw_multistatus = false;
    let mut best = FileAccess::None;
    // Inside a d:response: its oc:fileid and oc:permissions, as read so far.
    let mut response: Option<(Option<String>, Option<String>)> = None;
    // The property whose text is being read.
    let mut reading: Option<&'static str> = None;
    loop {
        let (namespace, event) = reader
            .read_resolved_event_into(&mut buffer)
            .map_err(|error| malformed(&error))?;
        let in_namespace = |ns: &[u8]| matches!(namespace, ResolveResult::Bound(ref bound) if bound.as_ref() == ns);
        match event {
            Event::Start(start) => {
                let local = start.local_name();
                match local.as_ref() {
                    b"multistatus" if in_namespace(DAV) => saw_multistatus = true,
                    b"response" if in_namespace(DAV) => response = Some((None, None)),
                    b"fileid" if in_namespace(OWNCLOUD) => reading = Some("fileid"),
                    b"permissions" if in_namespace(OWNCLOUD) => reading = Some("permissions"),
                    _ => {}
                }
            }
            Event::Empty(empty)
                if empty.local_name().as_ref() == b"multistatus" && in_namespace(DAV) =>
            {
                saw_multistatus = true;
            }
            Event::Text(text) => {
                if let (Some(field), Some((fileid, permissions))) = (reading, response.as_mut()) {
                    let text = text.decode().map_err(|error| malformed(&error))?;
                    let slot = if field == "fileid" {
                        fileid
                    } else {
                        permissions
                    };
                    slot.get_or_insert_with(String::new).push_str(&text);
                }
            }
            Event::End(end) => {
                let local = end.local_name();
                match local.as_ref() {
                    b"fileid" | b"permissions" => reading = None,
                    b"response" if in_namespace(DAV) => {
                        if let Some((fileid, permissions)) = response.take() {
                            let same_file = fileid
                                .as_deref()
                                .is_none_or(|id| id.trim().parse::<u64>() == Ok(file));
                            if same_file {
                                let writable = permissions.is_some_and(|p| p.contains('W'));
                                if writable {
                                    best = FileAccess::ReadWrite;
                                } else if best == FileAccess::None {
                                    best = FileAccess::ReadOnly;
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buffer.clear();
    }
    if !saw_multistatus {
        return Err(LookupError::Malformed("no DAV: multistatus element".into()));
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rooms_name_a_numeric_file_id() {
        assert_eq!(file_of_room("file:42"), Some(42));
        assert_eq!(file_of_room("file:text/42"), Some(42));
        assert_eq!(file_of_room("file:whiteboard/7"), Some(7));
        for other in [
            "doc",
            "file:",
            "file:text/",
            "file:abc",
            "file:text/4a",
            "file:a/b/42",
            "file:/42",
            "file:te xt/42",
            "file:-1",
            "file:99999999999999999999999",
            "File:42",
        ] {
            assert_eq!(file_of_room(other), None, "{other}");
        }
    }

    fn multistatus(responses: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0"?>
<d:multistatus xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns" xmlns:oc="http://owncloud.org/ns" xmlns:nc="http://nextcloud.org/ns">{responses}</d:multistatus>"#
        )
        .into_bytes()
    }

    fn response(fileid: u64, permissions: &str) -> String {
        format!(
            r#"<d:response><d:href>/remote.php/dav/files/alice/Readme.md</d:href><d:propstat><d:prop><oc:fileid>{fileid}</oc:fileid><oc:permissions>{permissions}</oc:permissions><d:getetag>&quot;5f1c&quot;</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"#
        )
    }

    #[test]
    fn only_w_means_write() {
        let parse = |body: Vec<u8>| parse_answer(&body, 42).expect("a multistatus");
        assert_eq!(
            parse(multistatus(&response(42, "RGDNVW"))),
            FileAccess::ReadWrite
        );
        // A read-only share still may be deleted, renamed, moved and re-shared.
        assert_eq!(
            parse(multistatus(&response(42, "SRGDNV"))),
            FileAccess::ReadOnly
        );
        assert_eq!(parse(multistatus("")), FileAccess::None);
        // Seen through two shares, one writable: the best of them.
        let two = format!("{}{}", response(42, "G"), response(42, "GW"));
        assert_eq!(parse(multistatus(&two)), FileAccess::ReadWrite);
        // A response about another file grants nothing.
        assert_eq!(parse(multistatus(&response(43, "GW"))), FileAccess::None);
    }

    #[test]
    fn namespaces_are_resolved_not_matched_by_prefix() {
        let body = br#"<?xml version="1.0"?>
<multistatus xmlns="DAV:" xmlns:o="http://owncloud.org/ns"><response><propstat><prop><o:fileid>42</o:fileid><o:permissions>RW</o:permissions></prop></propstat></response></multistatus>"#;
        assert_eq!(parse_answer(body, 42).ok(), Some(FileAccess::ReadWrite));
        let foreign = br#"<d:multistatus xmlns:d="urn:other"></d:multistatus>"#;
        assert!(parse_answer(foreign, 42).is_err());
        assert!(parse_answer(b"<html>login</html>", 42).is_err());
        assert!(parse_answer(b"<d:multistatus xmlns:d=\"DAV:\"><d:response>", 42).is_ok());
    }

    #[test]
    fn the_search_names_the_users_home_escaped() {
        let body = search_body("a&b <c>", 42);
        assert!(
            body.contains("<d:href>/files/a%26b%20%3Cc%3E</d:href>"),
            "{body}"
        );
        assert!(body.contains("<d:literal>42</d:literal>"));
    }
}
