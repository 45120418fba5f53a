//! Issue 13, finding 6, over a real server: a group change entry carries the change (who
//! joined or left, the owner after it), not the member list, so what a member is pushed
//! while a group grows one add at a time grows with the number of adds, not with its
//! square; the list itself is a `group_info` away.

mod im_support;

use im_support::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// The group's size at the end: the owner, one watching member, and the rest added one by
/// one.
const MEMBERS: usize = 200;
/// What one change entry may cost on the wire, whatever the group's size. With the member
/// list in every entry, the watcher below was pushed ~300 KB for this group (~1.5 KB per
/// entry on average, and growing), against a bound of 80 KB.
const PER_ENTRY: usize = 400;

/// The next frame as sent, with its length in bytes.
fn next_text(client: &mut Client) -> (usize, Value) {
    match client.ws.read() {
        Ok(Message::Text(text)) => {
            let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            (text.len(), value)
        }
        other => panic!("expected a text frame within the wait, got {other:?}"),
    }
}

/// The reply to `rid`; entries pushed meanwhile are acked, so nothing is pushed twice.
fn reply(client: &mut Client, rid: &Value) -> Value {
    loop {
        let (_, value) = next_text(client);
        if value["type"] == "msg" {
            client.send(json!({"type": "ack", "seq": value["seq"]}));
        } else if value["rid"] == *rid {
            return value;
        } else {
            panic!("unexpected {value} while waiting for {rid}");
        }
    }
}

/// Sends `request` with `rid` and returns its reply.
fn call(client: &mut Client, mut request: Value, rid: Value) -> Value {
    request["rid"] = rid.clone();
    client.send(request);
    reply(client, &rid)
}

/// The next pushed entry, acked, with its size.
fn next_entry(client: &mut Client) -> (usize, Value) {
    let (bytes, value) = next_text(client);
    assert_eq!(value["type"], "msg", "{value}");
    client.send(json!({"type": "ack", "seq": value["seq"]}));
    (bytes, value)
}

fn member(i: usize) -> String {
    format!("member-{i:03}")
}

#[test]
fn a_group_built_one_add_at_a_time_pushes_each_member_bytes_linear_in_its_size() {
    let server = Server::start(&[]);
    let mut owner = server.connect("owner");
    let mut watcher = server.connect("watcher");

    let request = json!({"type": "group_create", "name": "big", "members": ["watcher"]});
    let created = call(&mut owner, request, json!("create"));
    assert_eq!(created["members"], json!(["owner", "watcher"]), "{created}");
    let gid = created["gid"].as_str().expect("gid").to_owned();
    let (bytes, entry) = next_entry(&mut watcher);
    assert_eq!(entry["group"]["op"], "create", "{entry}");
    assert_eq!(entry["group"]["users"], json!(["owner", "watcher"]));
    let mut pushed = vec![bytes];

    for i in 2..MEMBERS {
        let request = json!({"type": "group_add", "gid": gid, "members": [member(i)]});
        let added = call(&mut owner, request, json!(i));
        assert_eq!(added["type"], "group", "{added}");
        // The one who asked still gets the whole group.
        assert_eq!(added["members"].as_array().expect("members").len(), i + 1);
        let (bytes, entry) = next_entry(&mut watcher);
        let change = &entry["group"];
        assert_eq!(
            (&change["op"], &change["users"], &change["owner"]),
            (&json!("add"), &json!([member(i)]), &json!("owner")),
            "{entry}"
        );
        assert!(change.get("members").is_none(), "{entry}");
        pushed.push(bytes);
    }

    let total: usize = pushed.iter().sum();
    assert!(
        total < MEMBERS * PER_ENTRY,
        "{total} bytes pushed to one member for a group of {MEMBERS}: {pushed:?}"
    );
    // Every add costs the same whatever the group's size, up to the digits of its numbers.
    let adds = &pushed[1..];
    let (least, most) = (adds.iter().min().unwrap(), adds.iter().max().unwrap());
    assert!(most - least < 16, "{least}..{most}: {adds:?}");

    // The list is there on request, whole and in join order.
    let info = call(
        &mut watcher,
        json!({"type": "group_info", "gid": gid}),
        json!("info"),
    );
    let mut everyone = vec!["owner".to_owned(), "watcher".to_owned()];
    everyone.extend((2..MEMBERS).map(member));
    assert_eq!(
        info,
        json!({"type": "group", "rid": "info", "gid": gid, "name": "big", "owner": "owner",
               "members": everyone})
    );

    // Only for members; and a group that is not there is not found.
    let mut outsider = server.connect("outsider");
    let refused = call(
        &mut outsider,
        json!({"type": "group_info", "gid": gid}),
        json!("x"),
    );
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("forbidden")),
        "{refused}"
    );
    let missing = call(
        &mut watcher,
        json!({"type": "group_info", "gid": "999999"}),
        json!("y"),
    );
    assert_eq!(missing["code"], "not_found", "{missing}");
}

#[test]
fn a_leave_entry_names_the_leaver_and_the_owner_after_it() {
    let server = Server::start(&[]);
    let mut ann = server.connect("ann");
    let mut bob = server.connect("bob");
    let request = json!({"type": "group_create", "name": "duo", "members": ["bob", "cat"]});
    let gid = call(&mut ann, request, json!(1))["gid"].clone();
    next_entry(&mut bob);

    let left = call(
        &mut ann,
        json!({"type": "group_leave", "gid": gid}),
        json!(2),
    );
    assert_eq!(left["type"], "ok", "{left}");
    let (_, entry) = next_entry(&mut bob);
    assert_eq!(
        entry["group"],
        json!({"op": "leave", "gid": gid, "name": "duo", "owner": "bob", "users": ["ann"]}),
        "the hand-over shows in the entry itself"
    );
    let info = call(
        &mut bob,
        json!({"type": "group_info", "gid": gid}),
        json!(3),
    );
    assert_eq!(
        (&info["owner"], &info["members"]),
        (&json!("bob"), &json!(["bob", "cat"]))
    );
    let refused = call(
        &mut ann,
        json!({"type": "group_info", "gid": gid}),
        json!(4),
    );
    assert_eq!(refused["code"], "forbidden", "who left sees it no more");
}
