//! Who is in a room and which connection is its active editor, and the events that tell
//! Hocuspocus members about both (what the Nextcloud Whiteboard backend keeps per board).
//! Called under the room's lock; pure bookkeeping, no I/O.
//!
//! Events are JSON objects with a top-level `"ycord"` key (the schema is in the README). A
//! client's own stateless messages are only ever relayed inside a `relay` envelope, as a string,
//! so nothing a client sends can pass for one of these events.
//!
//! The active editor is one read-write connection that hears stateless messages (only those
//! can be told): the first to join; when it leaves, another connection of the same user if
//! there is one, else the longest present (the lowest connection id). A read-only connection is
//! never elected.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::members::ConnectionId;

/// Who a member is, as ycord knows it (from the token, never from the client's messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The token's `sub`, or `connection-<id>` without one.
    pub user: Arc<str>,
    pub read_write: bool,
    /// Whether the member is told roster events and relayed stateless messages (a Hocuspocus
    /// connection; y-websocket has no message for them).
    pub hears_stateless: bool,
}

impl Profile {
    /// The user a connection is in the roster: its token's `sub`, or `connection-<id>`
    /// without one.
    pub fn user_of(subject: Option<&str>, connection: ConnectionId) -> Arc<str> {
        subject.map_or_else(|| format!("connection-{connection}").into(), Into::into)
    }
}

/// One connection as the events name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub user: Arc<str>,
    pub connection: ConnectionId,
}

/// One user of the room: how many connections it has there and whether any may write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RosterUser {
    pub user: Arc<str>,
    pub connections: usize,
    /// `"rw"` when one of its connections may write, else `"ro"`.
    pub mode: &'static str,
}

#[derive(Debug, Default)]
pub(super) struct Roster {
    members: BTreeMap<ConnectionId, Profile>,
    editor: Option<ConnectionId>,
}

impl Roster {
    /// Adds a member; returns the editor elected by this join, if it made one.
    pub fn add(&mut self, connection: ConnectionId, profile: Profile) -> Option<Identity> {
        let candidate = is_candidate(&profile);
        self.members.insert(connection, profile);
        if self.editor.is_none() && candidate {
            self.editor = Some(connection);
            return self.editor();
        }
        None
    }

    /// Removes a member; returns its profile and, when it was the editor, whether a new one
    /// (or none) was elected.
    pub fn remove(
        &mut self,
        connection: ConnectionId,
    ) -> Option<(Profile, Option<Option<Identity>>)> {
        let profile = self.members.remove(&connection)?;
        if self.editor != Some(connection) {
            return Some((profile, None));
        }
        self.editor = self.successor(&profile.user, |_| true);
        Some((profile, Some(self.editor())))
    }

    /// Changes whether a member may write (a refreshed token); returns the new editor when
    /// that changed who it is: a writer turned reader gives the role up, and a reader turned
    /// writer takes it when nobody holds it.
    pub fn set_read_write(
        &mut self,
        connection: ConnectionId,
        read_write: bool,
    ) -> Option<Option<Identity>> {
        let profile = self.members.get_mut(&connection)?;
        if profile.read_write == read_write {
            return None;
        }
        profile.read_write = read_write;
        let user = profile.user.clone();
        match self.editor {
            Some(editor) if editor == connection && !read_write => {
                self.editor = self.successor(&user, |_| true);
                Some(self.editor())
            }
            None if read_write && is_candidate(&self.members[&connection]) => {
                self.editor = Some(connection);
                Some(self.editor())
            }
            _ => None,
        }
    }

    /// Hands the role to another candidate for which `speaks` holds, when the editor's does
    /// not (it went silent); returns the new editor.
    pub fn hand_over_if_silent(
        &mut self,
        speaks: impl Fn(ConnectionId) -> bool,
    ) -> Option<Identity> {
        let editor = self.editor?;
        if speaks(editor) {
            return None;
        }
        let user = self.members.get(&editor)?.user.clone();
        let next = self.successor(&user, |id| id != editor && speaks(id))?;
        self.editor = Some(next);
        self.editor()
    }

    /// The next editor: a candidate of `user` first, else the longest-present one.
    fn successor(
        &self,
        user: &str,
        allowed: impl Fn(ConnectionId) -> bool,
    ) -> Option<ConnectionId> {
        let mut candidates = self
            .members
            .iter()
            .filter(|(id, profile)| is_candidate(profile) && allowed(**id));
        let mut first = None;
        for (id, profile) in candidates.by_ref() {
            if &*profile.user == user {
                return Some(*id);
            }
            first.get_or_insert(*id);
        }
        first
    }

    pub fn editor(&self) -> Option<Identity> {
        let connection = self.editor?;
        self.identity(connection)
    }

    pub fn identity(&self, connection: ConnectionId) -> Option<Identity> {
        let profile = self.members.get(&connection)?;
        Some(Identity {
            user: profile.user.clone(),
            connection,
        })
    }

    /// Connections `user` has in the room.
    pub fn connections_of(&self, user: &str) -> usize {
        self.members
            .values()
            .filter(|profile| &*profile.user == user)
            .count()
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<RosterUser> {
        let mut users: BTreeMap<&Arc<str>, RosterUser> = BTreeMap::new();
        for profile in self.members.values() {
            let entry = users.entry(&profile.user).or_insert_with(|| RosterUser {
                user: profile.user.clone(),
                connections: 0,
                mode: "ro",
            });
            entry.connections += 1;
            if profile.read_write {
                entry.mode = "rw";
            }
        }
        users.into_values().collect()
    }

    /// The `roster` event for the member `you`.
    pub fn roster_event(&self, you: ConnectionId) -> String {
        serde_json::json!({
            "ycord": "roster",
            "you": self.identity(you),
            "users": self.users(),
            "editor": self.editor(),
        })
        .to_string()
    }
}

fn is_candidate(profile: &Profile) -> bool {
    profile.read_write && profile.hears_stateless
}

/// `joined` or `left`: `who` came or went; `connections` is what its user has in the room now.
pub(super) fn presence_event(kind: &str, who: &Identity, connections: usize) -> String {
    serde_json::json!({
        "ycord": kind,
        "user": who.user,
        "connection": who.connection,
        "connections": connections,
    })
    .to_string()
}

/// `editor`: the active editor is now `editor` (or nobody).
pub(super) fn editor_event(editor: Option<&Identity>) -> String {
    serde_json::json!({ "ycord": "editor", "editor": editor }).to_string()
}

/// `relay`: a client's stateless `payload`, verbatim, with the sender as ycord knows it.
pub fn relay_event(from: &Identity, payload: &str) -> String {
    serde_json::json!({ "ycord": "relay", "from": from, "payload": payload }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(user: &str, read_write: bool) -> Profile {
        Profile {
            user: user.into(),
            read_write,
            hears_stateless: true,
        }
    }

    #[test]
    fn the_first_writer_is_elected_and_readers_never_are() {
        let mut roster = Roster::default();
        assert_eq!(roster.add(1, profile("reader", false)), None);
        let elected = roster.add(2, profile("alice", true)).unwrap();
        assert_eq!(elected.connection, 2);
        assert_eq!(roster.add(3, profile("bob", true)), None);
        let y_websocket = Profile {
            hears_stateless: false,
            ..profile("carol", true)
        };
        roster.add(4, y_websocket);
        // alice leaves: bob (the longest present writer that hears) takes over.
        let (_, change) = roster.remove(2).unwrap();
        assert_eq!(change.unwrap().unwrap().connection, 3);
        // bob leaves: only a reader and a y-websocket writer are left, neither electable.
        let (_, change) = roster.remove(3).unwrap();
        assert_eq!(change, Some(None));
        assert_eq!(roster.editor(), None);
    }

    #[test]
    fn the_same_user_keeps_the_role() {
        let mut roster = Roster::default();
        roster.add(1, profile("alice", true));
        roster.add(2, profile("bob", true));
        roster.add(3, profile("alice", true));
        let (_, change) = roster.remove(1).unwrap();
        assert_eq!(change.unwrap().unwrap().connection, 3);
        // Not the editor: no change.
        assert_eq!(roster.remove(2).unwrap().1, None);
    }

    #[test]
    fn a_silent_editor_hands_over_to_one_that_speaks() {
        let mut roster = Roster::default();
        roster.add(1, profile("alice", true));
        roster.add(2, profile("bob", true));
        assert_eq!(roster.hand_over_if_silent(|_| true), None);
        let next = roster.hand_over_if_silent(|id| id == 2).unwrap();
        assert_eq!(next.connection, 2);
        // Nobody speaks: the role stays where it is.
        assert_eq!(roster.hand_over_if_silent(|_| false), None);
        assert_eq!(roster.editor().unwrap().connection, 2);
    }

    #[test]
    fn a_writer_turned_reader_gives_the_role_up() {
        let mut roster = Roster::default();
        roster.add(1, profile("alice", true));
        roster.add(2, profile("bob", true));
        assert_eq!(roster.set_read_write(2, true), None, "no change");
        let change = roster.set_read_write(1, false).unwrap();
        assert_eq!(change.unwrap().connection, 2);
        roster.set_read_write(2, false);
        assert_eq!(roster.editor(), None);
        // A reader turned writer takes the vacant role.
        assert_eq!(
            roster.set_read_write(1, true).unwrap().unwrap().connection,
            1
        );
    }

    #[test]
    fn users_are_counted_once_with_their_mode() {
        let mut roster = Roster::default();
        roster.add(1, profile("alice", false));
        roster.add(2, profile("alice", true));
        roster.add(3, profile("bob", false));
        let users = roster.users();
        assert_eq!(users.len(), 2);
        assert_eq!((users[0].connections, users[0].mode), (2, "rw"));
        assert_eq!((users[1].connections, users[1].mode), (1, "ro"));
        let event: serde_json::Value = serde_json::from_str(&roster.roster_event(3)).unwrap();
        assert_eq!(event["ycord"], "roster");
        assert_eq!(event["you"]["user"], "bob");
        assert_eq!(event["editor"]["connection"], 2);
    }

    #[test]
    fn a_relayed_message_is_a_string_inside_the_envelope() {
        let from = Identity {
            user: "mallory".into(),
            connection: 7,
        };
        let forged = r#"{"ycord":"editor","editor":null}"#;
        let event: serde_json::Value = serde_json::from_str(&relay_event(&from, forged)).unwrap();
        assert_eq!(event["ycord"], "relay");
        assert_eq!(event["payload"], forged);
        assert_eq!(event["from"]["user"], "mallory");
    }
}
