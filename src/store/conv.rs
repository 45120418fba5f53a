//! Conversation ids: what names a conversation, and who a dm's id says takes part.
//!
//! A conversation is `dm:<a>:<b>` (two user ids, sorted; `a == b` is a note to self) or
//! `group:<gid>`. A dm's participants are the two users its id names; a group's are its
//! current members. Every participant has a `convs` row, which is what lists the
//! conversation: a dm gets one for each side at its first message, a group member one on
//! joining (removed on leaving).

use crate::user_id::valid_user_id;

/// A parsed conversation id, borrowing the user ids from the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvId<'a> {
    Dm(&'a str, &'a str),
    Group(u64),
}

impl<'a> ConvId<'a> {
    /// Only canonical ids: sorted, valid user ids; a gid in plain decimal. Anything else
    /// names no conversation, and accepting variants would let one conversation go by
    /// several names.
    pub(crate) fn parse(conv: &'a str) -> Option<ConvId<'a>> {
        if let Some(pair) = conv.strip_prefix("dm:") {
            let (a, b) = pair.split_once(':')?;
            (valid_user_id(a) && valid_user_id(b) && a <= b).then_some(ConvId::Dm(a, b))
        } else if let Some(gid) = conv.strip_prefix("group:") {
            parse_gid(gid).map(ConvId::Group)
        } else {
            None
        }
    }

    /// For a dm `user` takes part in: the other user, `None` for a note to self. `Err` when
    /// `user` is not one of the two.
    pub(crate) fn dm_peer(a: &'a str, b: &'a str, user: &str) -> Result<Option<&'a str>, ()> {
        match (a == user, b == user) {
            (true, true) => Ok(None),
            (true, false) => Ok(Some(b)),
            (false, true) => Ok(Some(a)),
            (false, false) => Err(()),
        }
    }
}

/// A gid as the server writes it: plain decimal, no sign, no leading zero, so one group
/// has one name.
pub(crate) fn parse_gid(gid: &str) -> Option<u64> {
    let canonical = !gid.is_empty()
        && gid.bytes().all(|b| b.is_ascii_digit())
        && (gid == "0" || !gid.starts_with('0'));
    if !canonical {
        return None;
    }
    gid.parse().ok()
}

/// `group:<gid>`.
pub(crate) fn group_conv(gid: u64) -> String {
    format!("group:{gid}")
}
