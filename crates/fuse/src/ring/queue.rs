//! One CPU's queue: which of its threads leads, and the hand-overs between
//! them (see "Leading, handing off, following" in the parent module).
//!
//! # Invariants
//!
//! * At most one thread leads (`State::leader`). Only the leader touches
//!   the [`Token`] (the ring and the entries not held by a handler): it
//!   takes it out of the state while it waits in `io_uring_enter`, and
//!   parks it there, under the lock, while it handles requests, so that a
//!   thread taking over (the monitor's steal, a handler's hand-off) finds
//!   it. `token` is `None` only while `leader` is set and `in_enter`
//!   holds (or before the first thread installed it).
//! * `held` counts the entries holding a request not yet answered (in the
//!   batch, or with a handler); `entries` counts the entries registered
//!   and not lost. `held <= entries`.
//! * `bound` counts, for each thread, the entries whose outstanding command
//!   it submitted, as of the token's last [`settle`](Queue::settle): the
//!   leader's own submissions are counted only once it is back from the
//!   ring, but only the leader binds, so another thread's count is never
//!   below the truth. A thread exits only at 0 (or once the queue
//!   stopped): the kernel would cancel its commands, and a request just
//!   handed to one of those entries would never be answered.

use super::entry::Entry;
use super::token::Token;
use super::wake;
use crate::session::RingCounters;
use crossbeam_utils::CachePadded;
use devlife_gate::sync::{lock, wait_timeout};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Idle threads a queue keeps to take over from a handler about to sleep;
/// more exit. A hand-off to an idle thread costs a wake-up, to none a
/// thread start.
const FOLLOWERS_KEEP: usize = 4;

/// The most entries a queue adds at once for deferred requests.
const GROW_MAX: usize = 256;

/// How often an idle thread that may not exit yet (entries are bound to
/// it) looks again.
const RECHECK: Duration = Duration::from_secs(1);

/// What a queue needs from its caller after its leader gave it up.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub(super) enum Need {
    /// An idle thread takes over (or a thread being started will).
    Nothing,
    /// A new thread, to lead (counted already).
    Thread,
}

/// What the leader does after a request.
pub(super) enum Step {
    /// Handle this one next.
    Next(Entry),
    /// The batch is done: wait on the ring with the token, then
    /// [`enter_end`](Queue::enter_end). With the number of entries added
    /// (submit them and ask for that many kicks first).
    Wait(Box<Token>, usize),
    /// It no longer leads: it keeps the reply it wrote (entry, commit id).
    Handed(Entry, u64),
    /// It no longer leads, and its request was deferred: nothing to finish.
    Lost,
    /// The queue stopped; the token, if it is the caller's to drop.
    Stopped(Option<Box<Token>>),
}

/// What the monitor sees of a queue (see [`Queue::look`]).
pub(super) struct Look {
    /// The leader's request, if it is in a handler.
    pub(super) running: Option<u64>,
    /// Whether requests wait for the leader.
    pub(super) waiting: bool,
}

/// What a thread that has finished a request it began as leader does next.
pub(super) enum Finish {
    /// It leads again (the queue had no leader): the next step.
    Lead(Step),
    /// Its reply was left to the leader; it follows.
    Follow,
    Stopped,
}

#[derive(Default)]
struct State {
    token: Option<Box<Token>>,
    leader: Option<u64>,
    /// The leader is in a handler (not once a steal acted on it).
    running: bool,
    /// Requests the queue's leaders have begun: the monitor's way to tell
    /// one long handler from many short ones.
    seq: u64,
    /// The leader waits in `io_uring_enter` (a wake-up reaches it there).
    in_enter: bool,
    /// Replies of threads that no longer lead, for the leader to commit.
    pending: Vec<(Entry, u64)>,
    held: usize,
    entries: usize,
    /// Entries bound, by thread (see the module's invariants).
    bound: Vec<(u64, usize)>,
    /// Threads waiting to lead.
    idle: usize,
    /// A thread was started to lead and has not arrived yet.
    starting: bool,
    threads: usize,
    stopped: bool,
    ring_fd: Option<RawFd>,
}

impl State {
    fn bound_to(&self, thread: u64) -> usize {
        self.bound.iter().find(|(t, _)| *t == thread).map_or(0, |(_, n)| *n)
    }

    /// Whether an idle thread `me` may exit rather than wait to lead.
    fn may_retire(&self, me: u64) -> bool {
        self.idle >= FOLLOWERS_KEEP && self.bound_to(me) == 0
    }
}

/// One CPU's queue.
pub(super) struct Queue {
    pub(super) qid: u16,
    /// The CPU its threads are pinned to, if this process may run there.
    pub(super) cpu: Option<usize>,
    /// An entry's payload size.
    pub(super) payload: usize,
    /// Most threads (`Config::max_workers`).
    max_threads: usize,
    /// Where a queue that grew asks for a kick.
    pub(super) kicks: Sender<(u16, usize)>,
    /// Requests and `io_uring_enter` calls, for the transport's counts.
    pub(super) counters: Arc<CachePadded<RingCounters>>,
    state: Mutex<State>,
    followers: Condvar,
}

impl Queue {
    pub(super) fn new(
        qid: u16,
        cpu: Option<usize>,
        payload: usize,
        max_threads: usize,
        kicks: Sender<(u16, usize)>,
        counters: Arc<CachePadded<RingCounters>>,
    ) -> Self {
        Queue {
            qid,
            cpu,
            payload,
            max_threads,
            kicks,
            counters,
            state: Mutex::default(),
            followers: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Takes what the token's last operations brought into the queue's
    /// state: requests taken (held now), entries lost, the connection's
    /// end, bindings, and the counters (under the lock, which orders the
    /// counters' writers: plain stores).
    fn settle(&self, st: &mut State) {
        let State { token, bound, held, entries, stopped, .. } = st;
        let Some(t) = token.as_mut() else { return };
        let r = t.take_reaped();
        *held += r.requests;
        *entries -= r.lost.min(*entries);
        if r.ended && !*stopped {
            *stopped = true;
            self.followers.notify_all();
        }
        for (thread, bind) in t.log.drain(..) {
            match bound.iter_mut().position(|(id, _)| *id == thread) {
                Some(i) if bind => bound[i].1 += 1,
                Some(i) => {
                    bound[i].1 -= 1;
                    if bound[i].1 == 0 {
                        bound.swap_remove(i);
                    }
                }
                None if bind => bound.push((thread, 1)),
                None => {}
            }
        }
        let c = &self.counters;
        if t.requests != 0 {
            let n = c.requests.load(Ordering::Relaxed) + std::mem::take(&mut t.requests);
            c.requests.store(n, Ordering::Relaxed);
        }
        if t.enters != 0 {
            let n = c.enters.load(Ordering::Relaxed) + std::mem::take(&mut t.enters);
            c.enters.store(n, Ordering::Relaxed);
        }
        c.entries.store(*entries as u64, Ordering::Relaxed);
    }

    /// The first thread installs the token (the ring with its first
    /// `entries` entries, submitted) and leads.
    pub(super) fn install(&self, token: Box<Token>, entries: usize, me: u64) {
        let mut st = self.lock();
        st.ring_fd = Some(token.ring_fd());
        st.token = Some(token);
        st.entries = entries;
        st.leader = Some(me);
        st.threads += 1;
        self.settle(&mut st);
    }

    /// Stops the queue (the connection ended): its threads exit.
    pub(super) fn stop(&self) {
        let mut st = self.lock();
        st.stopped = true;
        self.followers.notify_all();
        if st.in_enter {
            self.wake(&st);
        }
    }

    /// Wakes the leader out of `io_uring_enter` (the caller saw
    /// `in_enter`, under the lock: the leader holds the ring open).
    fn wake(&self, st: &State) {
        if let Some(fd) = st.ring_fd {
            if let Err(e) = wake::post(fd) {
                tracing::error!("ring queue {}: cannot wake its leader: {e}", self.qid);
            }
        }
    }

    /// The leader `me` starts leading: the next request of the batch, or
    /// the token to wait on the ring with.
    pub(super) fn resume(&self, me: u64) -> Step {
        let mut st = self.lock();
        self.next_step(&mut st, me)
    }

    /// What the leader does next, under the lock: the next request of the
    /// batch (its handler begins now); or, with the batch done, the token
    /// to wait on the ring with, the replies left to it pushed and the
    /// entries the queue grows by registered.
    fn next_step(&self, st: &mut State, me: u64) -> Step {
        self.settle(st);
        if st.stopped {
            return Step::Stopped(st.token.take());
        }
        let Some(t) = st.token.as_mut() else {
            tracing::error!("ring queue {}: the leader has no token", self.qid);
            return Step::Stopped(None);
        };
        while let Some(idx) = t.batch.pop_front() {
            if let Some(entry) = t.table[idx].take() {
                st.running = true;
                st.seq += 1;
                return Step::Next(entry);
            }
        }
        for (entry, commit_id) in std::mem::take(&mut st.pending) {
            t.commit(entry, commit_id, me);
        }
        let mut added = 0;
        for _ in 0..std::mem::take(&mut t.grow) {
            match t.add_entry(self.payload, me) {
                Ok(()) => added += 1,
                Err(e) => tracing::error!("ring queue {}: cannot add an entry: {e}", self.qid),
            }
        }
        st.entries += added;
        self.settle(st);
        st.in_enter = true;
        match st.token.take() {
            Some(t) => Step::Wait(t, added),
            None => Step::Stopped(None),
        }
    }

    /// The leader `me` is back from the ring: the token is parked, and the
    /// leader goes on with the next step.
    pub(super) fn enter_end(&self, t: Box<Token>, me: u64) -> Step {
        let mut st = self.lock();
        st.in_enter = false;
        st.token = Some(t);
        self.next_step(&mut st, me)
    }

    /// The leader `me` has answered a request in `entry`: pushes the commit
    /// and goes on with the next step; or, if it no longer leads, keeps the
    /// reply.
    pub(super) fn commit_next(&self, me: u64, entry: Entry, commit_id: u64) -> Step {
        let mut st = self.lock();
        if st.stopped {
            let token = if st.leader == Some(me) { st.token.take() } else { None };
            return Step::Stopped(token);
        }
        if st.leader != Some(me) {
            return Step::Handed(entry, commit_id);
        }
        st.running = false;
        st.held -= 1;
        if let Some(t) = st.token.as_mut() {
            t.commit(entry, commit_id, me);
        }
        self.next_step(&mut st, me)
    }

    /// The leader `me`'s handler deferred its request: the entry stays
    /// held (until [`complete_deferred`](Self::complete_deferred)) and the
    /// leader goes on with the next step; or, if it no longer leads, it
    /// has nothing to finish.
    pub(super) fn defer_next(&self, me: u64) -> Step {
        let mut st = self.lock();
        if st.stopped {
            let token = if st.leader == Some(me) { st.token.take() } else { None };
            return Step::Stopped(token);
        }
        if st.leader != Some(me) {
            return Step::Lost;
        }
        st.running = false;
        // Every entry held (this one among them) and none queued for the
        // leader: requests would wait in the kernel until a deferred reply
        // comes, so more entries take them (after as many kicks: a new
        // entry gets no request already waiting, only a commit fetches
        // one, and this entry's commit waits for its reply). A quarter
        // more at a time: thousands of waiting requests cost a few dozen
        // registrations and kick threads, and an entry the kernel has not
        // written to is not resident.
        let all_held = st.held >= st.entries;
        let more = (st.entries / 4).clamp(1, GROW_MAX);
        if let Some(t) = st.token.as_mut() {
            if all_held && t.batch.is_empty() {
                t.grow = t.grow.max(more);
            }
        }
        self.next_step(&mut st, me)
    }

    /// A deferred request's reply is in `entry`: the leader commits it
    /// with the next batch (woken if it waits on the ring).
    pub(super) fn complete_deferred(&self, entry: Entry, commit_id: u64) {
        let mut st = self.lock();
        if st.stopped {
            drop(st);
            // Held: no command is outstanding on it.
            drop(entry);
            return;
        }
        st.held -= 1;
        st.pending.push((entry, commit_id));
        if st.in_enter {
            self.wake(&st);
        }
    }

    /// A thread that began a request as leader and lost the lead meanwhile
    /// has its reply in `entry`: it leads again if nobody does, otherwise
    /// leaves the reply to the leader (waking it if it waits on the ring).
    pub(super) fn finish(&self, me: u64, entry: Entry, commit_id: u64) -> Finish {
        let mut st = self.lock();
        if st.stopped {
            drop(st);
            // Held by a handler: no command is outstanding on it.
            drop(entry);
            return Finish::Stopped;
        }
        st.held -= 1;
        if st.leader.is_none() {
            if let Some(t) = st.token.as_mut() {
                t.commit(entry, commit_id, me);
                st.leader = Some(me);
                return Finish::Lead(self.next_step(&mut st, me));
            }
        }
        st.pending.push((entry, commit_id));
        if st.in_enter {
            self.wake(&st);
        }
        Finish::Follow
    }

    /// The leader `me`'s handler is about to sleep: another thread takes
    /// the queue over (see "Leading, handing off, following"). `None` if
    /// `me` does not lead, or may not give the queue up.
    pub(super) fn hand_off(&self, me: u64) -> Option<Need> {
        let mut st = self.lock();
        if st.leader != Some(me) || st.stopped {
            return None;
        }
        self.give_up(&mut st)
    }

    /// What the monitor sees: the leader's request, if it is in a handler,
    /// and whether requests wait for it (in the batch, or completed on the
    /// ring: the kernel wrote them through the task work of a thread that
    /// is not waiting on the ring).
    pub(super) fn look(&self) -> Look {
        let mut st = self.lock();
        let running = (st.running && !st.stopped).then_some(st.seq);
        let waiting = !st.pending.is_empty() || st.token.as_mut().is_some_and(|t| t.has_work());
        Look { running, waiting }
    }

    /// Another thread takes the queue over from a leader still in the
    /// handler of request `seq`. `None` if nothing was done.
    pub(super) fn steal(&self, seq: u64) -> Option<Need> {
        let mut st = self.lock();
        if st.stopped || !st.running || st.seq != seq {
            return None;
        }
        self.give_up(&mut st)
    }

    /// The leader stops leading; an idle thread is woken to take over, or
    /// a new one asked for. If the queue may not have another thread, the
    /// leader keeps leading (the queue waits for its handler): `None`.
    fn give_up(&self, st: &mut State) -> Option<Need> {
        st.running = false;
        let need = if st.idle > 0 {
            self.followers.notify_one();
            Need::Nothing
        } else if st.starting {
            Need::Nothing
        } else if st.threads < self.max_threads {
            st.starting = true;
            st.threads += 1;
            Need::Thread
        } else {
            tracing::warn!("ring queue {}: at its thread limit; a handler's sleep holds it up", self.qid);
            return None;
        };
        st.leader = None;
        // Every entry is with a handler, and none is queued for the next
        // leader to answer: requests would wait in the kernel until one of
        // those handlers returns. One more entry takes them (after a kick,
        // see "Kicks").
        let all_held = st.held >= st.entries;
        if let Some(t) = st.token.as_mut() {
            if all_held && t.batch.is_empty() {
                t.grow += 1;
            }
        }
        Some(need)
    }

    /// A thread asked for by [`Need::Thread`] could not be started.
    pub(super) fn spawn_failed(&self) {
        let mut st = self.lock();
        st.starting = false;
        st.threads -= 1;
    }

    /// A thread started by [`Need::Thread`] arrives.
    pub(super) fn arrive(&self) {
        self.lock().starting = false;
    }

    /// Waits until thread `me` leads (`true`), or may exit (`false`: the
    /// queue stopped, or has idle threads enough and no entry is bound to
    /// `me`).
    pub(super) fn follow(&self, me: u64) -> bool {
        let mut st = self.lock();
        loop {
            if st.stopped {
                return false;
            }
            if st.leader.is_none() && st.token.is_some() {
                st.leader = Some(me);
                return true;
            }
            if st.may_retire(me) {
                return false;
            }
            st.idle += 1;
            st = wait_timeout(&self.followers, st, RECHECK);
            st.idle -= 1;
        }
    }

    /// A thread of the queue exits.
    pub(super) fn leave(&self) {
        let mut st = self.lock();
        st.threads -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        Queue::new(0, None, 4096, usize::MAX, std::sync::mpsc::channel().0, Arc::default())
    }

    /// Installs a token with `n` entries and `batch` requests taken, led
    /// by thread 1.
    fn installed(n: usize, batch: &[usize]) -> Queue {
        let q = queue();
        let mut t = Token::for_test(n);
        t.took_for_test(batch);
        q.install(t, n, 1);
        q
    }

    fn next(step: Step) -> Entry {
        match step {
            Step::Next(e) => e,
            _ => panic!("expected a request to handle"),
        }
    }

    #[test]
    fn a_sleeping_leader_hands_the_queue_to_an_idle_thread() {
        let q = Arc::new(installed(2, &[0]));
        let follower = {
            let q = q.clone();
            std::thread::spawn(move || q.follow(2))
        };
        while q.lock().idle == 0 {
            std::thread::yield_now();
        }
        let e = next(q.resume(1));
        assert_eq!(q.hand_off(2), None, "only the leader hands off");
        assert_eq!(q.hand_off(1), Some(Need::Nothing), "an idle thread takes over");
        assert!(follower.join().unwrap(), "and leads");
        assert_eq!(q.lock().leader, Some(2));
        // The old leader's reply goes to the new leader.
        let (e, id) = match q.commit_next(1, e, 7) {
            Step::Handed(e, id) => (e, id),
            _ => panic!("the old leader keeps its reply"),
        };
        assert!(matches!(q.finish(1, e, id), Finish::Follow));
        assert_eq!(q.lock().pending.len(), 1);
        assert_eq!(q.lock().held, 0);
    }

    #[test]
    fn a_queue_whose_entries_are_all_held_grows_and_asks_for_a_thread() {
        let q = installed(1, &[0]);
        let _e = next(q.resume(1));
        assert_eq!(q.hand_off(1), Some(Need::Thread), "no idle thread: a new one");
        {
            let mut st = q.lock();
            assert_eq!((st.leader, st.threads, st.starting), (None, 2, true));
            assert_eq!(st.token.as_mut().unwrap().grow, 1, "every entry is held: one more");
        }
        // The new thread arrives and leads at once.
        q.arrive();
        assert!(q.follow(3));
        assert_eq!(q.lock().leader, Some(3));
    }

    #[test]
    fn a_queue_with_an_entry_to_spare_does_not_grow() {
        let q = installed(2, &[0]);
        let _e = next(q.resume(1));
        assert_eq!(q.hand_off(1), Some(Need::Thread));
        assert_eq!(q.lock().token.as_mut().unwrap().grow, 0);
    }

    #[test]
    fn a_finished_old_leader_leads_again_if_nobody_does() {
        let q = installed(1, &[0]);
        let e = next(q.resume(1));
        assert_eq!(q.hand_off(1), Some(Need::Thread));
        let (e, id) = match q.commit_next(1, e, 9) {
            Step::Handed(e, id) => (e, id),
            _ => panic!("no longer the leader"),
        };
        // Its commit is pushed, the batch is empty: it waits on the ring.
        match q.finish(1, e, id) {
            Finish::Lead(Step::Wait(_, added)) => assert_eq!(added, 1, "the growth asked for is registered"),
            _ => panic!("it leads again and waits on the ring"),
        }
        let st = q.lock();
        assert_eq!((st.leader, st.held, st.entries, st.in_enter), (Some(1), 0, 2, true));
    }

    #[test]
    fn the_monitor_steals_only_from_the_request_it_saw() {
        let q = installed(2, &[0, 1]);
        let e0 = next(q.resume(1));
        let look = q.look();
        let first = look.running.unwrap();
        assert!(look.waiting, "a request waits in the batch");
        let _e1 = next(q.commit_next(1, e0, 1));
        assert_eq!(q.steal(first), None, "that handler has returned");
        let second = q.look().running.unwrap();
        assert_ne!(first, second);
        assert!(q.steal(second).is_some());
        assert_eq!(q.look().running, None, "once per request");
    }

    #[test]
    fn a_thread_with_bound_entries_does_not_retire() {
        let q = installed(2, &[]);
        let mut st = q.lock();
        st.idle = FOLLOWERS_KEEP;
        st.token.as_mut().unwrap().log.extend([(5, true), (5, true), (6, true), (6, false)]);
        q.settle(&mut st);
        assert_eq!(st.bound_to(5), 2);
        assert!(!st.may_retire(5), "a command it submitted is outstanding");
        assert!(st.may_retire(6), "its command completed");
        assert!(!st.bound.iter().any(|(t, _)| *t == 6), "threads at 0 are not kept");
        st.idle = FOLLOWERS_KEEP - 1;
        assert!(!st.may_retire(6), "the queue keeps idle threads");
    }

    #[test]
    fn a_stopped_queue_gives_its_token_to_be_dropped() {
        let q = installed(1, &[0]);
        let e = next(q.resume(1));
        q.stop();
        assert!(matches!(q.commit_next(1, e, 1), Step::Stopped(Some(_))));
        assert!(!q.follow(2), "its threads exit");
    }
}
