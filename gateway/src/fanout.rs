//! One supervisor stream per followed job, shared by its followers: the
//! job's new bytes cross the supervisor's socket once however many clients
//! follow it, and reach each follower as the same shared buffer.
//!
//! A follower starts on a stream of its own: the supervisor decides there
//! whether the caller may follow the job, and serves what it missed from
//! the job's log. Once a job has two followers, each of them, at its first
//! output byte that the job's shared stream holds, moves over to the job's
//! [`Hub`]: one task reading one supervisor stream into a bounded [`Ring`]
//! of chunks, which every member reads at its own pace, by offset.
//!
//! Flow control: the hub reads the next chunk only while the ring has room,
//! so it goes at the pace of its slowest member, down to [`MIN_PACE`]; the
//! job itself never waits (the supervisor stores its output whatever its
//! streams do). When the ring has stayed full for [`EVICT_AFTER`] (it did
//! not drain to half meanwhile) and its oldest byte moved on less than
//! [`MIN_PACE`] bytes in that time, the members holding that byte are
//! evicted: each goes back to a stream of its own from its offset, as any
//! follower that falls behind reads the rest from the log, and does not
//! come back to that hub. When the hub's stream fails (the supervisor
//! restarted, say), its members drain the ring and go back to streams of
//! their own the same way; those resume as any stream does.

use std::collections::{HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use jobworker_ipc::client::StreamFrame;
use jobworker_ipc::{Identity, JobId, JobInfo, OutputData, Request};
use tokio::sync::Notify;

use crate::supervisor::Supervisor;

/// The most output bytes a job's ring holds for its slowest member.
const RING_BYTES: usize = 4 << 20;

/// How long the ring may stay full while its slowest members read less
/// than [`MIN_PACE`] before they are evicted.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// The bytes the slowest members must read per [`EVICT_AFTER`] while the
/// ring is full to stay on the shared stream (1 MiB/s).
pub const MIN_PACE: u64 = 1 << 20;

/// The shared streams of this gateway's followed jobs.
#[derive(Default)]
pub struct Fanout {
    jobs: Mutex<HashMap<JobId, Followed>>,
}

/// A followed job.
#[derive(Default)]
struct Followed {
    /// Its followers on this gateway, on a shared stream or not.
    followers: usize,
    /// Its shared stream, while there is one.
    hub: Option<Arc<Hub>>,
}

impl Fanout {
    /// Counts a follower of `job` until the returned guard drops.
    pub fn follower(self: &Arc<Self>, job: JobId) -> Follower {
        self.lock().entry(job).or_default().followers += 1;
        Follower {
            fanout: Arc::clone(self),
            job,
            left: Weak::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Followed>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets `hub`, its stream ended.
    fn forget(&self, job: JobId, hub: &Arc<Hub>) {
        let mut jobs = self.lock();
        if let Some(followed) = jobs.get_mut(&job) {
            if followed.hub.as_ref().is_some_and(|h| Arc::ptr_eq(h, hub)) {
                followed.hub = None;
            }
            if followed.followers == 0 && followed.hub.is_none() {
                jobs.remove(&job);
            }
        }
    }
}

/// A follower of a job, counted while it lives.
pub struct Follower {
    fanout: Arc<Fanout>,
    job: JobId,
    /// The shared stream it last left: it does not join that one again.
    left: Weak<Hub>,
}

impl Follower {
    /// A place on the job's shared stream for a follower whose next byte is
    /// `offset`, if the job has one that holds that byte (and this follower
    /// did not leave it), or has two followers or more (the shared stream
    /// is then opened from `offset`, on behalf of `identity`, whom the
    /// supervisor already let follow the job).
    pub fn share(
        &self,
        supervisor: &Arc<Supervisor>,
        identity: &Identity,
        offset: u64,
    ) -> Option<Member> {
        let mut jobs = self.fanout.lock();
        let followed = jobs.get_mut(&self.job)?;
        if let Some(hub) = &followed.hub {
            if std::ptr::eq(Arc::as_ptr(hub), self.left.as_ptr()) {
                return None;
            }
            let id = hub.lock().attach(offset)?;
            return Some(Member {
                hub: Arc::clone(hub),
                id,
            });
        }
        if followed.followers < 2 {
            return None;
        }
        let hub = Arc::new(Hub {
            ring: Mutex::new(Ring::new(offset)),
            data: Notify::new(),
            room: Notify::new(),
        });
        let id = hub.lock().attach(offset)?;
        followed.hub = Some(Arc::clone(&hub));
        tracing::debug!(job = %self.job, offset, "the job's followers share one stream");
        tokio::spawn(Arc::clone(&hub).run(
            Arc::clone(&self.fanout),
            Arc::clone(supervisor),
            identity.clone(),
            self.job,
            offset,
        ));
        Some(Member { hub, id })
    }

    /// Leaves the shared stream of `member`, for good.
    pub fn leave(&mut self, member: Member) {
        self.left = Arc::downgrade(&member.hub);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut jobs = self.fanout.lock();
        if let Some(followed) = jobs.get_mut(&self.job) {
            followed.followers = followed.followers.saturating_sub(1);
            if followed.followers == 0 && followed.hub.is_none() {
                jobs.remove(&self.job);
            }
        }
    }
}

/// A job's shared stream: its ring, filled by one task.
struct Hub {
    ring: Mutex<Ring>,
    /// New bytes, or the stream's end.
    data: Notify,
    /// Room in the full ring, or no member left.
    room: Notify,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fills the ring from a stream of the job from `offset` until the
    /// job's end, the stream's failure or the last member's leaving.
    async fn run(
        self: Arc<Self>,
        fanout: Arc<Fanout>,
        supervisor: Arc<Supervisor>,
        identity: Identity,
        job: JobId,
        offset: u64,
    ) {
        let last = self.pump(&supervisor, &identity, job, offset).await;
        if matches!(last, Last::Lost) {
            tracing::debug!(%job, "the job's shared stream ended before the job; its followers go on alone");
        }
        self.lock().finish(last);
        self.data.notify_waiters();
        fanout.forget(job, &self);
    }

    async fn pump(
        &self,
        supervisor: &Supervisor,
        identity: &Identity,
        job: JobId,
        offset: u64,
    ) -> Last {
        let request = Request::StreamOutput {
            job,
            offset,
            follow: true,
        };
        let mut stream = match supervisor.stream_outside_limits(identity, request).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%job, error = %e, "opening the job's shared stream failed");
                return Last::Lost;
            }
        };
        let mut pace = Pace::default();
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            let (members, deadline) = {
                let ring = self.lock();
                (ring.members(), pace.deadline(Instant::now(), &ring))
            };
            if members == 0 {
                return Last::Lost;
            }
            if let Some(deadline) = deadline {
                let deadline = tokio::time::Instant::from_std(deadline);
                if tokio::time::timeout_at(deadline, room).await.is_err() {
                    let evicted = self.lock().evict_oldest();
                    pace = Pace::default();
                    tracing::info!(%job, evicted, "followers fell behind the job's shared stream; they read on alone");
                    self.data.notify_waiters();
                }
                continue;
            }
            let frame = tokio::select! {
                frame = stream.next() => frame,
                () = room => continue,
            };
            match frame {
                Ok(Some(StreamFrame::Output { offset, data })) => {
                    if !self.lock().push(offset, data) {
                        return Last::Lost;
                    }
                    self.data.notify_waiters();
                }
                Ok(Some(StreamFrame::End(info))) => return Last::Ended(info),
                Ok(Some(StreamFrame::Error(_)) | None) | Err(_) => return Last::Lost,
            }
        }
    }
}

/// Whether a full ring waits on members too slow to keep: it has been full
/// since a moment (not drained to half meanwhile), and its oldest byte has
/// moved on less than [`MIN_PACE`] bytes since.
#[derive(Default)]
struct Pace {
    /// Since when, and the ring's oldest byte then.
    window: Option<(Instant, u64)>,
}

impl Pace {
    /// When the slowest members are to be evicted if the ring gets no room
    /// before: `None` unless it is full.
    fn deadline(&mut self, now: Instant, ring: &Ring) -> Option<Instant> {
        if ring.held <= RING_BYTES / 2 {
            self.window = None;
            return None;
        }
        if !ring.is_full() {
            return None;
        }
        let (since, from) = self.window.get_or_insert((now, ring.start));
        if ring.start >= from.saturating_add(MIN_PACE) {
            (*since, *from) = (now, ring.start);
        }
        Some(*since + EVICT_AFTER)
    }
}

/// A follower's place on a job's shared stream.
pub struct Member {
    hub: Arc<Hub>,
    id: MemberId,
}

impl Member {
    /// The next output bytes, or how the shared stream ended for this
    /// member.
    pub async fn next(&mut self) -> Shared {
        loop {
            let mut data = pin!(self.hub.data.notified());
            data.as_mut().enable();
            let (read, room) = self.hub.lock().read(self.id);
            if room {
                self.hub.room.notify_one();
            }
            match read {
                Read::Next(shared) => return shared,
                Read::Wait => data.await,
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.hub.lock().detach(self.id) {
            self.hub.room.notify_one();
        }
    }
}

/// What a member of a shared stream gets next.
#[derive(Debug, PartialEq)]
pub enum Shared {
    /// Output bytes from `offset`.
    Output {
        /// The offset of the first byte of `data`.
        offset: u64,
        /// The bytes.
        data: OutputData,
    },
    /// The job ended so; no byte is left.
    End(Box<JobInfo>),
    /// The shared stream has nothing more for this member (it failed, or
    /// the member fell behind): it goes on with a stream of its own.
    Alone,
}

/// What a member's read found.
#[derive(Debug, PartialEq)]
enum Read {
    Next(Shared),
    /// Nothing yet.
    Wait,
}

/// How a shared stream ended.
#[derive(Debug)]
enum Last {
    Ended(Box<JobInfo>),
    Lost,
}

type MemberId = u64;

/// The chunks of a job's output that a shared stream holds, from the
/// oldest byte one of its members has yet to read; and each member's next
/// byte. Contiguous: each chunk starts where the one before it ends.
#[derive(Debug)]
struct Ring {
    chunks: VecDeque<(u64, OutputData)>,
    /// The offset of the first byte held (`end` when none is).
    start: u64,
    /// The offset just past the last byte held.
    end: u64,
    /// Bytes held.
    held: usize,
    /// Each member's next byte; `None` once it is evicted.
    members: HashMap<MemberId, Option<u64>>,
    next_id: MemberId,
    last: Option<Last>,
}

impl Ring {
    fn new(offset: u64) -> Self {
        Self {
            chunks: VecDeque::new(),
            start: offset,
            end: offset,
            held: 0,
            members: HashMap::new(),
            next_id: 0,
            last: None,
        }
    }

    /// A new member whose next byte is `offset`, unless the ring does not
    /// hold that byte (or it is the next one to come), or its stream failed.
    fn attach(&mut self, offset: u64) -> Option<MemberId> {
        if offset < self.start || offset > self.end || matches!(self.last, Some(Last::Lost)) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.members.insert(id, Some(offset));
        Some(id)
    }

    /// Removes a member; true if that makes room, or leaves no member.
    fn detach(&mut self, id: MemberId) -> bool {
        let was_full = self.is_full();
        self.members.remove(&id);
        self.trim();
        (was_full && !self.is_full()) || self.members() == 0
    }

    /// Members not evicted.
    fn members(&self) -> usize {
        self.members.values().flatten().count()
    }

    fn is_full(&self) -> bool {
        self.held >= RING_BYTES
    }

    /// The member's next bytes (the rest of the chunk holding its next
    /// byte), and whether reading them made room in the full ring.
    fn read(&mut self, id: MemberId) -> (Read, bool) {
        let Some(Some(at)) = self.members.get(&id).copied() else {
            return (Read::Next(Shared::Alone), false);
        };
        if at >= self.end {
            let read = match &self.last {
                None => Read::Wait,
                Some(Last::Ended(info)) => Read::Next(Shared::End(info.clone())),
                Some(Last::Lost) => Read::Next(Shared::Alone),
            };
            return (read, false);
        }
        // A member's next byte is never below `start`: see `trim`.
        let Some(i) = self
            .chunks
            .partition_point(|(offset, _)| *offset <= at)
            .checked_sub(1)
        else {
            return (Read::Next(Shared::Alone), false);
        };
        let (offset, chunk) = &self.chunks[i];
        let data = chunk.tail(usize::try_from(at - offset).unwrap_or(usize::MAX));
        self.members.insert(id, Some(at + data.len() as u64));
        let was_full = self.is_full();
        self.trim();
        let room = was_full && !self.is_full();
        (Read::Next(Shared::Output { offset: at, data }), room)
    }

    /// Appends a chunk of the stream; false if it does not start where the
    /// ring ends.
    fn push(&mut self, offset: u64, data: OutputData) -> bool {
        if offset != self.end {
            return false;
        }
        self.end += data.len() as u64;
        self.held += data.len();
        self.chunks.push_back((offset, data));
        self.trim();
        true
    }

    /// Evicts the members whose next byte is the oldest held; how many.
    fn evict_oldest(&mut self) -> usize {
        let Some(oldest) = self.members.values().flatten().min().copied() else {
            return 0;
        };
        let mut evicted = 0;
        for next in self.members.values_mut() {
            if *next == Some(oldest) {
                *next = None;
                evicted += 1;
            }
        }
        self.trim();
        evicted
    }

    /// Records how the stream ended.
    fn finish(&mut self, last: Last) {
        self.last.get_or_insert(last);
    }

    /// Drops the chunks that every member has read.
    fn trim(&mut self) {
        let oldest = self
            .members
            .values()
            .flatten()
            .min()
            .copied()
            .unwrap_or(self.end);
        while let Some((offset, chunk)) = self.chunks.front() {
            let end = offset + chunk.len() as u64;
            if end > oldest {
                break;
            }
            self.held -= chunk.len();
            self.start = end;
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: usize) -> OutputData {
        OutputData::new(vec![byte; len]).unwrap()
    }

    fn output(read: (Read, bool)) -> (u64, Vec<u8>) {
        match read.0 {
            Read::Next(Shared::Output { offset, data }) => (offset, data.as_slice().to_vec()),
            other => panic!("expected output, got {other:?}"),
        }
    }

    #[test]
    fn each_member_reads_every_byte_from_its_offset_and_the_oldest_sets_what_is_kept() {
        let mut ring = Ring::new(100);
        let a = ring.attach(100).unwrap();
        assert_eq!(ring.read(a).0, Read::Wait);
        assert!(ring.push(100, chunk(1, 5)));
        let b = ring.attach(103).unwrap();
        assert!(ring.push(105, chunk(2, 5)));
        assert_eq!(output(ring.read(b)), (103, vec![1, 1]));
        assert_eq!(output(ring.read(b)), (105, vec![2; 5]));
        assert_eq!(ring.read(b).0, Read::Wait);
        // a has read nothing yet: all is kept for it.
        assert_eq!((ring.start, ring.held), (100, 10));
        assert_eq!(output(ring.read(a)), (100, vec![1; 5]));
        assert_eq!((ring.start, ring.held), (105, 5));
        // A new member can join only where the ring still holds its byte.
        assert_eq!(ring.attach(104), None);
        let c = ring.attach(107).unwrap();
        assert_eq!(output(ring.read(c)), (107, vec![2; 3]));
        assert_eq!(output(ring.read(a)), (105, vec![2; 5]));
        assert_eq!((ring.start, ring.held), (110, 0));
    }

    #[test]
    fn a_chunk_that_does_not_follow_on_is_refused() {
        let mut ring = Ring::new(0);
        ring.attach(0).unwrap();
        assert!(!ring.push(1, chunk(0, 1)));
        assert!(ring.push(0, chunk(0, 1)));
    }

    #[test]
    fn the_members_holding_the_oldest_chunk_are_evicted_and_the_rest_read_on() {
        let mut ring = Ring::new(0);
        let slow = ring.attach(0).unwrap();
        let fast = ring.attach(0).unwrap();
        let mut offset = 0;
        while !ring.is_full() {
            assert!(ring.push(offset, chunk(7, 64 * 1024)));
            offset += 64 * 1024;
        }
        let (_, room) = ring.read(fast);
        assert!(!room, "the slow member still holds the oldest chunk");
        assert_eq!(ring.evict_oldest(), 1);
        assert_eq!(ring.members(), 1);
        assert_eq!(ring.read(slow).0, Read::Next(Shared::Alone));
        assert_eq!(ring.start, 64 * 1024);
        assert!(!ring.is_full());
        assert_eq!(output(ring.read(fast)).0, 64 * 1024);
        // Its leaving is room, and the last member's leaving stops the hub.
        assert!(!ring.detach(slow));
        assert!(ring.detach(fast));
    }

    #[test]
    fn a_member_joins_only_where_the_ring_holds_its_byte_or_the_next_to_come() {
        let mut ring = Ring::new(100);
        ring.attach(100).unwrap();
        assert!(ring.push(100, chunk(1, 10)));
        assert_eq!(ring.attach(99), None);
        assert_eq!(ring.attach(111), None, "ahead of the shared stream");
        assert!(ring.attach(105).is_some());
        assert!(ring.attach(110).is_some());
    }

    /// Fills `ring` with chunks of 64 KiB from `offset` until it is full;
    /// where they end.
    fn fill(ring: &mut Ring, mut offset: u64) -> u64 {
        while !ring.is_full() {
            assert!(ring.push(offset, chunk(7, 64 * 1024)));
            offset += 64 * 1024;
        }
        offset
    }

    #[test]
    fn a_full_ring_evicts_after_a_second_below_the_minimum_pace_and_not_above_it() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut ring = Ring::new(0);
        let slow = ring.attach(0).unwrap();
        let mut pace = Pace::default();
        assert_eq!(
            pace.deadline(at(0), &ring),
            None,
            "an empty ring waits on no one"
        );
        let mut end = fill(&mut ring, 0);
        assert_eq!(pace.deadline(at(0), &ring), Some(at(1000)));
        // A chunk read every 900 ms does not put the deadline off...
        output(ring.read(slow));
        end = fill(&mut ring, end);
        assert_eq!(pace.deadline(at(900), &ring), Some(at(1000)));
        // ...but reading MIN_PACE bytes does.
        while ring.start < MIN_PACE {
            output(ring.read(slow));
        }
        fill(&mut ring, end);
        assert_eq!(pace.deadline(at(950), &ring), Some(at(1950)));
        // Not full: no deadline, and the window holds until the ring has
        // drained to half.
        output(ring.read(slow));
        assert!(!ring.is_full());
        assert_eq!(pace.deadline(at(960), &ring), None);
        assert!(pace.window.is_some());
        ring.detach(slow);
        assert!(ring.held <= RING_BYTES / 2);
        assert_eq!(pace.deadline(at(970), &ring), None);
        assert!(pace.window.is_none());
    }

    #[test]
    fn members_drain_the_ring_before_its_end() {
        let mut ring = Ring::new(0);
        let a = ring.attach(0).unwrap();
        assert!(ring.push(0, chunk(1, 3)));
        ring.finish(Last::Lost);
        assert_eq!(output(ring.read(a)), (0, vec![1; 3]));
        assert_eq!(ring.read(a).0, Read::Next(Shared::Alone));
        assert_eq!(ring.attach(3), None, "a failed stream takes no member");
    }
}
