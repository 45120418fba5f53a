//! Persistence: SQLite (WAL) behind bounded channels, so the reactor never waits on a disk.
//!
//! ```text
//!  reactor ──submit (try_send)──► writer queue ──► writer thread ──┐  group commit:
//!          │                                     (one connection) │  BEGIN … COMMIT, then
//!          └──submit (try_send)──► reader queue ──► reader pool ──┤  completions in order
//!  reactor ◄── completions (bounded) ◄───────────────────────────┘  + notify() (mio Waker)
//! ```
//!
//! The store knows nothing of sockets, mio or the wire protocol: it takes [`Job`]s and gives
//! back [`Completion`]s carrying the job's `tag`, which the caller uses to find whoever
//! asked. [`Store::submit`] never blocks: when a queue is full it hands the job back and the
//! caller answers `unavailable`. After pushing completions a store thread calls the
//! `notify` callback given to [`open`]; the reactor passes one that wakes its `mio::Waker`.
//!
//! # Writes: one writer, group commit
//! One thread owns the only read-write connection. It blocks for a job, drains whatever
//! else is waiting (up to `max_batch`), runs the lot in one transaction with cached
//! statements, commits, and only then sends the completions, in job order, and calls
//! `notify` once. A completion therefore always means "committed": the `sent` built from
//! it never runs ahead of the disk (PROTOCOL.md guarantee 1), and completions come back in
//! the order jobs were accepted, which is also the order of commit, which is the order of
//! seqs. Failure handling is described in `writer.rs`: a failed batch is rolled back and
//! its jobs retried one transaction each, so only the job at fault fails.
//!
//! Being the only writer (the data folder is `flock`ed, so a second process is refused at
//! open) the writer keeps the uid and inbox head of the users in use in memory (read on
//! first use, dropped past a bound) and assigns seqs with no query; `users.head` is
//! written once per touched user per batch, so the table is exact at every commit. It also remembers
//! group member lists (`groups.rs`) and which dm conversations are already listed for
//! both sides (`conv.rs`), so neither a message to a large group nor a message in a
//! running conversation reads or writes rows for them. All of it is dropped or restored
//! when a transaction rolls back.
//!
//! # Conversations, groups, recall
//! A message belongs to one conversation, `dm:<a>:<b>` or `group:<gid>` (`conv.rs`), is
//! stored once in `messages` and reaches its participants through their inboxes. Every
//! participant has a `convs` row holding their read cursor, which is what the conversation
//! list (`views.rs`) is made of. Group changes and recalls are messages too, written by
//! the server on the user's behalf (`events.rs`): a `group` event to every member
//! (`groups.rs`), a `recall` notice to every participant after the body is erased in
//! storage (`recall.rs`). History, last messages and unread counts read the
//! `(conv, mid)` index.
//!
//! # Reads: a pool of snapshot readers
//! `readers` threads share one queue, each with a read-only connection. WAL gives each read
//! transaction a consistent snapshot while the writer commits, so paging an inbox never
//! blocks a commit and a page's `head` always matches its entries.
//!
//! # Order of completions
//! Write completions arrive in the order the jobs were submitted. Read completions carry
//! no order: two readers may finish out of order, and a read may overtake or trail the
//! writes around it. What holds: a read submitted after a write's completion was received
//! sees that write, and every entry a page returns is committed (its completion has been
//! or will be sent). Match completions to requests by `tag`.
//!
//! # Checkpoints off the commit path
//! WAL pages are copied back into the database file by a checkpointer thread, with the
//! writer doing only the short last step between two batches (see `checkpoint.rs` for why
//! both are needed). SQLite's default, a checkpoint inside every `COMMIT` that crosses
//! 1,000 pages, stalled commits for tens of milliseconds several times a second at 20,000
//! sends/s, which is most of a 10 ms p99 budget gone.
//!
//! # What survives what
//! Every commit goes through the write-ahead log. With `synchronous=NORMAL` (the default)
//! `COMMIT` returns once the WAL frames are written to the OS (no fsync): a commit survives
//! `kill -9` of the process, because the kernel already holds the data and writes it out
//! anyway, but the commits since the last checkpoint (about a second at most: every
//! checkpoint fsyncs the WAL) may be lost to a power loss or OS crash; the database stays
//! consistent and comes back as of an earlier commit. With `synchronous=FULL` the WAL
//! is fsynced at every commit, so a commit also survives power loss. Group commit is what
//! makes FULL affordable: one fsync covers a whole batch, and batches grow as load grows.
//! Either way a message whose `sent` went out is committed; a client that gets an error, or
//! no answer, resends its `cid` and the `(sender, cid)` key makes that harmless.
//!
//! # A full or failing disk
//! A write transaction that fails for the disk's sake (`SQLITE_FULL`, `SQLITE_IOERR_*`, a
//! read-only file system, a lock held elsewhere) is rolled back whole and every job of
//! its batch is answered [`StoreError::Unavailable`]: nothing of it is on disk, no `sent`
//! goes out for it, and the writer's heads and caches are as at the last commit, so the
//! seqs continue without a gap. The writer carries on; each new write tries the disk
//! again, so writes resume by themselves once there is room. Reads never need space and
//! go on throughout. A checkpoint that cannot grow the database file fails, leaves the
//! WAL as it was, and is tried again after the next commit.
//!
//! # Bounds and shutdown
//! The job queues are bounded by `queue` (counted in jobs, not bytes: the hub's message
//! size limit and rate limits bound what one job carries), the completion channel by four
//! of the writer's batches; neither allocates more than what waits in it. A store
//! thread whose completion channel is full waits for the reactor to drain it, so the queues
//! back up and `submit` starts handing jobs back: backpressure, not memory growth.
//! [`Store::shutdown`] (and dropping the [`Store`]) closes the queues, lets the threads
//! finish every job already accepted, commits it, and joins them; nothing accepted is lost.
//!
//! # Adding a job kind or a schema change
//! A job kind is a [`Job`] variant, a [`Completion`] variant, an arm in [`Job::lane`], one in
//! `complete` (mod.rs) and one in the writer's `apply` or the reader's loop. A schema change
//! is a step appended to `schema::MIGRATIONS`, never an edit of an existing one.

mod blocks;
mod budget;
mod checkpoint;
mod conv;
mod cursor;
mod dms;
mod error;
mod events;
mod groups;
mod reader;
mod recall;
mod schema;
mod stats;
mod tx;
mod users;
mod views;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

pub use budget::Budget;
pub(crate) use conv::{parse_gid, ConvId};
pub use error::StoreError;
pub use stats::{Histogram, Stats, BUCKETS};

use error::{io, sql};

/// File name of the database inside the data folder.
pub const DB_FILE: &str = "courier.db";
/// Reader threads by default: enough to keep sync off the writer's core on a 2-core box.
pub const DEFAULT_READERS: usize = 2;
/// Most jobs per write transaction by default: big enough that the per-commit cost
/// vanishes, small enough that one batch's completions stay a short burst for the reactor.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// Bound of each job queue (writer jobs, reader jobs) by default.
pub const DEFAULT_QUEUE: usize = 65536;
/// Most completions waiting for the reactor: four of the writer's largest batches. A
/// bounded crossbeam channel allocates every slot up front (a completion is ~300 bytes), so
/// a bound sized like the job queues cost 19 MB of memory at start for nothing; past this
/// the store's threads wait for the reactor, which is the backpressure wanted.
const COMPLETION_SLOTS: usize = 4 * DEFAULT_MAX_BATCH;

/// Called by a store thread after it has pushed completions. Must not block.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// How hard a commit pushes to disk; see the module docs ("What survives what").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// No fsync per commit: survives `kill -9`, may lose the last commits on power loss.
    #[default]
    Normal,
    /// fsync of the WAL per commit (per batch): survives power loss.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

impl FromStr for Synchronous {
    type Err = String;

    /// `normal` or `full`, as `--synchronous` takes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            other => Err(format!("expected normal or full, got {other:?}")),
        }
    }
}

impl fmt::Display for Synchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        })
    }
}

/// Everything [`open`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Data folder, created if missing; holds [`DB_FILE`], its WAL and a lock file.
    pub dir: PathBuf,
    pub synchronous: Synchronous,
    /// Reader threads; 0 is taken as 1.
    pub readers: usize,
    /// Most jobs per write transaction; 0 is taken as 1.
    pub max_batch: usize,
    /// Bound of each job queue, in jobs; 0 is taken as 1. The completion channel holds at
    /// most this many too, and never more than four of the writer's largest batches.
    pub queue: usize,
    /// Groups created and new users named per user per hour (`budget.rs`).
    pub budget: Budget,
}

impl StoreConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            synchronous: Synchronous::Normal,
            readers: DEFAULT_READERS,
            max_batch: DEFAULT_MAX_BATCH,
            queue: DEFAULT_QUEUE,
            budget: Budget::default(),
        }
    }
}

/// Work for the store. `tag` is the caller's, returned untouched in the completion.
///
/// User ids are taken as given: the hub validates them (PROTOCOL.md: 1 to 64 bytes of
/// `[A-Za-z0-9_.-]`) and takes the sender from the token; the store only refuses empty ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Store a 1:1 message (writer). Answered by [`Completion::Sent`].
    Send {
        tag: u64,
        sender: String,
        /// Client message id, unique per sender: a resend is answered with the original.
        cid: String,
        /// Recipient user id; may be the sender (a note to self).
        to: String,
        body: String,
        kind: String,
        /// Milliseconds since the epoch, set by the hub; stored as given.
        ts: u64,
    },
    /// Store a message to a group (writer): the message once, an inbox entry per member.
    /// The sender must be a member ([`StoreError::Forbidden`]; no such group:
    /// [`StoreError::NotFound`]). Answered by [`Completion::Sent`], whose `deliveries` hold
    /// the sender's entry first, then every other member's.
    GroupSend {
        tag: u64,
        sender: String,
        cid: String,
        gid: u64,
        body: String,
        kind: String,
        ts: u64,
    },
    /// Read a page of a user's inbox (reader). Answered by [`Completion::Page`].
    Page {
        tag: u64,
        user: String,
        /// Entries with seq greater than this.
        after: u64,
        /// At most this many entries. The caller caps it (PROTOCOL.md: default 1000).
        limit: u32,
        /// And no more entries once their bodies reach this many bytes (at least one entry
        /// is read): the caller sends at most that much at once, and reading the rest
        /// would cost the reader for nothing.
        max_bytes: u64,
    },
    /// Recall `mid` (writer): only its sender, only while `now - ts <= window_ms`, only a
    /// participant of its conversation still. Erases the body in storage, marks the message
    /// recalled, and stores a `recall` message (`ref` = `mid`, empty body, cid
    /// `recall:<mid>`) with an inbox entry for every participant. Recalling again returns
    /// the first recall as a duplicate. Answered by [`Completion::Recalled`].
    Recall {
        tag: u64,
        user: String,
        mid: u64,
        now: u64,
        window_ms: u64,
    },
    /// Move `user`'s read cursor in `conv` to `mid` if that is forward (writer). `mid` must
    /// be a message of `conv`, and the user a participant. Answered by [`Completion::Read`].
    MarkRead {
        tag: u64,
        user: String,
        conv: String,
        mid: u64,
    },
    /// Create a group owned by `owner` with `members` (the owner is added if missing,
    /// duplicates dropped; more than `max_members` in all: [`StoreError::Forbidden`]).
    /// Answered by [`Completion::Group`].
    GroupCreate {
        tag: u64,
        owner: String,
        name: String,
        members: Vec<String>,
        ts: u64,
        max_members: u32,
    },
    /// Add `members` to `gid` (owner only; those already in are skipped). Answered by
    /// [`Completion::Group`]; with nobody new, no event is stored.
    GroupAdd {
        tag: u64,
        user: String,
        gid: u64,
        members: Vec<String>,
        ts: u64,
        max_members: u32,
    },
    /// `user` leaves `gid` (members only). An owner who leaves hands ownership to the
    /// member who joined earliest; the last member leaving ends the group. Answered by
    /// [`Completion::Group`].
    GroupLeave {
        tag: u64,
        user: String,
        gid: u64,
        ts: u64,
    },
    /// `user`'s conversations, newest last message first, at most `limit` (reader).
    /// Answered by [`Completion::Convs`].
    Convs { tag: u64, user: String, limit: u32 },
    /// Messages of `conv` older than `before` (newest when `None`), at most `limit` and
    /// about `max_bytes` of JSON (at least one), oldest first (reader). Only for a
    /// participant. Answered by [`Completion::History`].
    History {
        tag: u64,
        user: String,
        conv: String,
        before: Option<u64>,
        limit: u32,
        max_bytes: u64,
    },
    /// Group `gid` as it is now, its members in join order, asked by `user`, who must be
    /// one ([`StoreError::Forbidden`]; no such group: [`StoreError::NotFound`]) (reader).
    /// What `group_info` answers, and whom a `typing` goes to. Answered by
    /// [`Completion::Members`].
    Members { tag: u64, user: String, gid: u64 },
    /// `user` blocks `peer` (`block`), or lifts the block (writer). While a block stands,
    /// either way, neither may dm the other or add the other to a group
    /// ([`StoreError::Forbidden`]), and [`Job::Reach`] keeps them apart. Blocking twice or
    /// lifting a block that is not there changes nothing. Answered by
    /// [`Completion::Block`].
    Block {
        tag: u64,
        user: String,
        peer: String,
        block: bool,
        ts: u64,
    },
    /// The users `user` blocks, oldest block first (reader). Answered by
    /// [`Completion::BlockList`].
    Blocked { tag: u64, user: String },
    /// Whom `user` may reach with presence and typing (reader): of `audience`, the users
    /// who share a conversation with them (a dm with a message in it, or a group both are
    /// members of now) with no block between them either way. Answered by
    /// [`Completion::Reach`].
    Reach {
        tag: u64,
        user: String,
        audience: Audience,
    },
}

/// The answer to a [`Job::Reach`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Within reach, in the order asked (a group's members in join order).
    pub reachable: Vec<String>,
    /// Sharing a conversation with the asker, but with a block between them: out of reach,
    /// and to be shown as a contact who is offline, never as a stranger (that would tell
    /// the blocked user who blocks them).
    pub hidden: Vec<String>,
}

/// Whom a [`Job::Reach`] asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// These users; the answer keeps those reachable, in the order given.
    Users(Vec<String>),
    /// The other members of this group, which `user` must be a member of
    /// ([`StoreError::Forbidden`]; no such group: [`StoreError::NotFound`]).
    Group(u64),
}

/// Which queue a job goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Write,
    Read,
}

impl Job {
    pub fn tag(&self) -> u64 {
        match self {
            Job::Send { tag, .. }
            | Job::GroupSend { tag, .. }
            | Job::Page { tag, .. }
            | Job::Recall { tag, .. }
            | Job::MarkRead { tag, .. }
            | Job::GroupCreate { tag, .. }
            | Job::GroupAdd { tag, .. }
            | Job::GroupLeave { tag, .. }
            | Job::Convs { tag, .. }
            | Job::History { tag, .. }
            | Job::Members { tag, .. }
            | Job::Block { tag, .. }
            | Job::Blocked { tag, .. }
            | Job::Reach { tag, .. } => *tag,
        }
    }

    pub fn lane(&self) -> Lane {
        match self {
            Job::Send { .. }
            | Job::GroupSend { .. }
            | Job::Recall { .. }
            | Job::MarkRead { .. }
            | Job::GroupCreate { .. }
            | Job::GroupAdd { .. }
            | Job::GroupLeave { .. }
            | Job::Block { .. } => Lane::Write,
            Job::Page { .. }
            | Job::Convs { .. }
            | Job::History { .. }
            | Job::Members { .. }
            | Job::Blocked { .. }
            | Job::Reach { .. } => Lane::Read,
        }
    }
}

/// A finished job, sent only after its transaction committed (or failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// A `Send` or `GroupSend`.
    Sent {
        tag: u64,
        result: Result<Sent, StoreError>,
    },
    Page {
        tag: u64,
        user: String,
        after: u64,
        result: Result<Page, StoreError>,
    },
    /// The stored `recall` message (kind `recall`, `ref_mid` set) and its deliveries.
    Recalled {
        tag: u64,
        result: Result<Sent, StoreError>,
    },
    Read {
        tag: u64,
        result: Result<ReadMoved, StoreError>,
    },
    /// A `GroupCreate`, `GroupAdd` or `GroupLeave`.
    Group {
        tag: u64,
        result: Result<GroupChange, StoreError>,
    },
    Convs {
        tag: u64,
        result: Result<Vec<ConvSummary>, StoreError>,
    },
    History {
        tag: u64,
        result: Result<History, StoreError>,
    },
    Members {
        tag: u64,
        result: Result<GroupInfo, StoreError>,
    },
    Block {
        tag: u64,
        result: Result<(), StoreError>,
    },
    BlockList {
        tag: u64,
        result: Result<Vec<String>, StoreError>,
    },
    Reach {
        tag: u64,
        result: Result<Reach, StoreError>,
    },
}

impl Completion {
    pub fn tag(&self) -> u64 {
        match self {
            Completion::Sent { tag, .. }
            | Completion::Page { tag, .. }
            | Completion::Recalled { tag, .. }
            | Completion::Read { tag, .. }
            | Completion::Group { tag, .. }
            | Completion::Convs { tag, .. }
            | Completion::History { tag, .. }
            | Completion::Members { tag, .. }
            | Completion::Block { tag, .. }
            | Completion::BlockList { tag, .. }
            | Completion::Reach { tag, .. } => *tag,
        }
    }
}

/// A read cursor after a `MarkRead`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMoved {
    pub conv: String,
    /// The cursor now (the one asked for, or a later one already there).
    pub mid: u64,
    /// False when the cursor was already at or past the `mid` asked for: nothing changed.
    pub moved: bool,
    /// The other user of a `dm:` conversation (absent for a note to self and for groups).
    pub peer: Option<String>,
}

/// A group as it is after a change, and the `group` inbox entry the change stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupChange {
    pub gid: u64,
    pub name: String,
    /// `None` once the last member has left (the group has ended).
    pub owner: Option<String>,
    /// Current members, in the order they joined.
    pub members: Vec<String>,
    /// Whom the change is about: every member of a new group, those an add added, the
    /// user who left; empty when nothing changed.
    pub changed: Vec<String>,
    /// The `kind: "group"` message and its deliveries (every member after the change, and
    /// whoever left); `None` when nothing changed (an add of people already in).
    /// Its body is the JSON object `{"op","gid","name","owner","users"}`: the change,
    /// never the member list (`groups.rs`).
    pub event: Option<Sent>,
}

/// A group as a reader saw it (`Job::Members`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub gid: u64,
    pub name: String,
    /// `None` once the group has ended (then nobody is a member, so nobody is shown it).
    pub owner: Option<String>,
    /// In join order (`groups.rs`).
    pub members: Vec<String>,
}

/// One conversation in a `convs` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSummary {
    pub conv: String,
    /// A group's name.
    pub name: Option<String>,
    /// The newest message of the conversation (recall notices aside).
    pub last: Option<Message>,
    /// Messages after `read_mid` from someone else, neither recalled nor notices.
    pub unread: u64,
    pub read_mid: u64,
    /// For a `dm:`, the peer's read cursor (what read receipts show after a reconnect).
    pub peer_read_mid: Option<u64>,
}

/// A page of a conversation's history, oldest first; `more` when older messages remain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub conv: String,
    pub msgs: Vec<Message>,
    pub more: bool,
}

/// A message of a conversation, without any inbox's seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub mid: u64,
    pub conv: String,
    pub from: String,
    pub cid: String,
    /// Empty once recalled.
    pub body: String,
    pub kind: String,
    pub ts: u64,
    pub ref_mid: Option<u64>,
    pub recalled: bool,
}

/// A stored (or found again) message: what the `sent` reply and the `msg` pushes need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub mid: u64,
    pub conv: String,
    pub ts: u64,
    /// The sender's inbox seq for this message.
    pub sender_seq: u64,
    /// The `cid` was seen before: every field is the original's and nothing was stored.
    pub duplicate: bool,
    /// New inbox entries, `(user, seq)`: the sender's first, then the recipient's (absent
    /// for a note to self). Empty for a duplicate.
    pub deliveries: Vec<(String, u64)>,
    pub from: String,
    pub cid: String,
    pub body: String,
    pub kind: String,
}

/// One inbox entry with its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub mid: u64,
    pub conv: String,
    pub from: String,
    pub cid: String,
    pub body: String,
    pub kind: String,
    pub ts: u64,
    /// The message this entry refers to (a recall's target).
    pub ref_mid: Option<u64>,
    /// The message was recalled: its body is gone.
    pub recalled: bool,
}

/// A page of an inbox and the inbox head, both from one snapshot: every seq up to `head`
/// is committed, and a page with fewer than `limit` entries reaches the head (its last seq
/// is `head`; an empty page means `after >= head`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub head: u64,
}

/// The handle the reactor keeps. Dropping it is a graceful shutdown too.
pub struct Store {
    /// The job queues are unbounded channels kept within `queue` by [`Store::submit`]: their
    /// memory follows the jobs waiting, where a bounded channel's would be allocated whole
    /// (65,536 slots of ~140 bytes, twice) at start. The reactor is their one sender, so the
    /// length it checks can only shrink before its send.
    writer: Option<Sender<Job>>,
    reader: Option<Sender<Job>>,
    queue: usize,
    /// A second receiver of the completion channel: lets `shutdown` drain what the caller
    /// has not taken, so a store thread blocked on a full channel can finish.
    completions: Receiver<Completion>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<stats::Counters>,
    /// The checkpointer's extra descriptor of the database file, closed only once every
    /// connection is (see `checkpoint.rs`).
    db_file: Option<Arc<std::fs::File>>,
}

/// Opens (creating and migrating as needed) the store in `config.dir` and starts its
/// threads. Returns the handle and the completion channel.
pub fn open(
    config: &StoreConfig,
    notify: Notify,
) -> Result<(Store, Receiver<Completion>), StoreError> {
    open_gated(config, notify, None)
}

/// [`open`], with a test hook: given a gate, the writer takes one message from it before
/// each batch, after its first job, so a test can queue jobs and release them as one batch.
fn open_gated(
    config: &StoreConfig,
    notify: Notify,
    gate: Option<Receiver<()>>,
) -> Result<(Store, Receiver<Completion>), StoreError> {
    let lock = data_folder(&config.dir)?;
    let path = config.dir.join(DB_FILE);
    let conn = schema::open_writer(&path, config.synchronous)?;
    let users = users::Users::new(&conn).map_err(sql)?;
    // Open every connection before starting any thread, so a failure here needs no cleanup.
    let checkpointer = schema::open_checkpointer(&path).map_err(sql)?;
    let readers = (0..config.readers.max(1))
        .map(|_| schema::open_reader(&path))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql)?;

    let queue = config.queue.max(1);
    let (writer_tx, writer_rx) = unbounded();
    let (reader_tx, reader_rx) = unbounded();
    let (done_tx, done_rx) = bounded(queue.min(COMPLETION_SLOTS));
    let (nudge_tx, nudge_rx) = bounded(1);
    let counters = Arc::new(stats::Counters::default());
    let finish_checkpoint = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Opened last, so an error above never closes it while a connection is open.
    let db_file = Arc::new(std::fs::File::open(&path).map_err(io)?);
    let mut store = Store {
        writer: Some(writer_tx),
        reader: Some(reader_tx),
        queue,
        completions: done_rx.clone(),
        threads: Vec::with_capacity(2 + readers.len()),
        counters: counters.clone(),
        db_file: Some(db_file.clone()),
    };

    let writer = writer::Writer {
        conn,
        users,
        jobs: writer_rx,
        done: done_tx.clone(),
        notify: notify.clone(),
        counters: counters.clone(),
        max_batch: config.max_batch.max(1),
        budget: config.budget,
        checkpoint: nudge_tx,
        finish_checkpoint: finish_checkpoint.clone(),
        _lock: lock,
        gate,
    };
    let checkpointer = checkpoint::Checkpointer {
        conn: checkpointer,
        nudges: nudge_rx,
        finish: finish_checkpoint,
        db_file,
        counters: counters.clone(),
    };
    type Body = Box<dyn FnOnce() + Send>;
    let mut bodies: Vec<(String, Body)> = vec![
        (
            "courier-store-checkpoint".into(),
            Box::new(move || checkpointer.run()),
        ),
        (
            "courier-store-writer".into(),
            Box::new(move || writer.run()),
        ),
    ];
    for (i, conn) in readers.into_iter().enumerate() {
        let reader = reader::Reader {
            conn,
            jobs: reader_rx.clone(),
            done: done_tx.clone(),
            notify: notify.clone(),
            counters: counters.clone(),
        };
        bodies.push((
            format!("courier-store-reader-{i}"),
            Box::new(move || reader.run()),
        ));
    }
    // Only the threads may hold completion senders: `shutdown` waits for the channel to
    // disconnect, which is how it knows every thread is done.
    drop(done_tx);
    drop(reader_rx);
    let mut bodies = bodies.into_iter();
    let mut failed = None;
    for (name, body) in bodies.by_ref() {
        match thread::Builder::new().name(name).spawn(body) {
            Ok(handle) => store.threads.push(handle),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        // Close what never started (its connections and senders) first, then let the
        // store's drop stop and join what did, and only then close `db_file`.
        drop(bodies);
        drop(store);
        return Err(io(e));
    }
    Ok((store, done_rx))
}

/// Creates the data folder if needed and takes its lock, with errors that say which path
/// and what is wrong with it: the bare OS error ("File exists", "Not a directory",
/// "Read-only file system") does not tell an operator what to fix.
fn data_folder(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let at = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(StoreError::Io {
            kind: std::io::ErrorKind::AlreadyExists,
            message: format!("the data folder {at} is a file, not a folder"),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
        kind: e.kind(),
        message: format!("cannot create the data folder {at}: {e}"),
    })?;
    schema::lock(dir).map_err(|e| match e {
        StoreError::Io { kind, message } => StoreError::Io {
            kind,
            message: format!("cannot write in the data folder {at}: {message}"),
        },
        other => other,
    })
}

impl Store {
    /// Queues a job without blocking. Gives the job back when its queue is full (or the
    /// store is shutting down), so the caller can answer `unavailable`.
    // The error *is* the job, handed back whole so the caller can answer it; boxing it to
    // shrink the rare error would cost an allocation on every submit.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let queue = match job.lane() {
            Lane::Write => &self.writer,
            Lane::Read => &self.reader,
        };
        match queue {
            Some(queue) if queue.len() < self.queue => queue.send(job).map_err(|e| e.into_inner()),
            _ => Err(job),
        }
    }

    /// Counters and queue depths, for `/metrics` and the bench.
    pub fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        stats.writer_queue = self.writer.as_ref().map_or(0, Sender::len);
        stats.reader_queue = self.reader.as_ref().map_or(0, Sender::len);
        stats.completion_queue = self.completions.len();
        stats
    }

    /// Closes the queues, waits until every job accepted so far has been committed (or
    /// failed) and answered, and joins the threads.
    ///
    /// Returns the completions the caller had not yet received, in order (the caller's
    /// receiver is left empty and disconnected). Draining them here is what keeps a store
    /// thread from waiting forever on a full completion channel that nobody reads any more.
    /// A caller that is past answering anyone can ignore them: the commits stand.
    pub fn shutdown(mut self) -> Vec<Completion> {
        self.close()
    }

    fn close(&mut self) -> Vec<Completion> {
        self.writer = None;
        self.reader = None;
        // Ends when the last store thread has dropped its sender, i.e. has finished.
        let rest: Vec<Completion> = self.completions.iter().collect();
        for handle in self.threads.drain(..) {
            // A store thread that panicked has nothing left to give; the process aborts on
            // panic in release builds anyway.
            let _ = handle.join();
        }
        // Every connection is closed now, so this descriptor can go without taking
        // SQLite's locks with it.
        self.db_file = None;
        rest
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.close();
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// `dm:<a>:<b>` with the two ids sorted, so both sides name the conversation alike.
pub(crate) fn dm_conv(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut conv = String::with_capacity(4 + lo.len() + hi.len());
    conv.push_str("dm:");
    conv.push_str(lo);
    conv.push(':');
    conv.push_str(hi);
    conv
}

/// What a job produced inside the store, before it is joined with the job's own fields
/// into a [`Completion`]. Kept apart from the job so a failed batch can run its jobs again.
pub(crate) enum Outcome {
    Sent {
        mid: u64,
        conv: String,
        sender_seq: u64,
        recipient_seq: Option<u64>,
    },
    Duplicate {
        mid: u64,
        conv: String,
        ts: u64,
        sender_seq: u64,
        kind: String,
        body: String,
    },
    Page(Page),
    /// A job whose outcome is its whole answer, built inside the store.
    GroupSent(Sent),
    Recalled(Sent),
    Read(ReadMoved),
    Group(GroupChange),
    Convs(Vec<ConvSummary>),
    History(History),
    Members(GroupInfo),
    /// A write whose answer is only that it committed.
    Done,
    Users(Vec<String>),
    Reach(Reach),
}

/// Joins a job with its outcome, moving the job's strings into the completion.
pub(crate) fn complete(job: Job, outcome: Result<Outcome, StoreError>) -> Completion {
    let mismatch = || StoreError::Internal("outcome does not match the job".into());
    // The outcome of a job whose answer was built whole inside the store.
    macro_rules! built {
        ($variant:ident) => {
            outcome.and_then(|o| match o {
                Outcome::$variant(answer) => Ok(answer),
                _ => Err(mismatch()),
            })
        };
    }
    match job {
        Job::Send {
            tag,
            sender,
            cid,
            to,
            body,
            kind,
            ts,
        } => {
            let result = outcome.and_then(|outcome| match outcome {
                Outcome::Sent {
                    mid,
                    conv,
                    sender_seq,
                    recipient_seq,
                } => {
                    let mut deliveries = Vec::with_capacity(2);
                    deliveries.push((sender.clone(), sender_seq));
                    if let Some(seq) = recipient_seq {
                        deliveries.push((to, seq));
                    }
                    Ok(Sent {
                        mid,
                        conv,
                        ts,
                        sender_seq,
                        duplicate: false,
                        deliveries,
                        from: sender,
                        cid,
                        body,
                        kind,
                    })
                }
                Outcome::Duplicate {
                    mid,
                    conv,
                    ts,
                    sender_seq,
                    kind,
                    body,
                } => Ok(Sent {
                    mid,
                    conv,
                    ts,
                    sender_seq,
                    duplicate: true,
                    deliveries: Vec::new(),
                    from: sender,
                    cid,
                    body,
                    kind,
                }),
                _ => Err(mismatch()),
            });
            Completion::Sent { tag, result }
        }
        Job::GroupSend { tag, .. } => Completion::Sent {
            tag,
            result: built!(GroupSent),
        },
        Job::Recall { tag, .. } => Completion::Recalled {
            tag,
            result: built!(Recalled),
        },
        Job::MarkRead { tag, .. } => Completion::Read {
            tag,
            result: built!(Read),
        },
        Job::GroupCreate { tag, .. } | Job::GroupAdd { tag, .. } | Job::GroupLeave { tag, .. } => {
            Completion::Group {
                tag,
                result: built!(Group),
            }
        }
        Job::Convs { tag, .. } => Completion::Convs {
            tag,
            result: built!(Convs),
        },
        Job::History { tag, .. } => Completion::History {
            tag,
            result: built!(History),
        },
        Job::Members { tag, .. } => Completion::Members {
            tag,
            result: built!(Members),
        },
        Job::Block { tag, .. } => Completion::Block {
            tag,
            result: outcome.and_then(|o| match o {
                Outcome::Done => Ok(()),
                _ => Err(mismatch()),
            }),
        },
        Job::Blocked { tag, .. } => Completion::BlockList {
            tag,
            result: built!(Users),
        },
        Job::Reach { tag, .. } => Completion::Reach {
            tag,
            result: built!(Reach),
        },
        Job::Page {
            tag, user, after, ..
        } => {
            let result = built!(Page);
            Completion::Page {
                tag,
                user,
                after,
                result,
            }
        }
    }
}
