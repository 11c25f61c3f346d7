//! Connections grouped by their opener stack: the one definition of a stack group, shared by
//! `tracer stacks` answers and the evidence of leak alerts (which keeps its groups, names
//! included, for as long as the alert is listed).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{detect::RemoteCount, stacks::symbolize::Frame, table::Direction};

/// Open connections that one stack opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StackGroup {
    /// The stack's id: the same in `tracer stacks`, `conns` (`stack_group`) and leak evidence
    /// while a connection of the group is open (ids are not reused before the daemon has
    /// interned 2^32 stacks).
    pub id: u32,
    /// Open connections opened by this stack.
    pub count: u32,
    /// Whether the stack connected (`outbound`) or accepted (`inbound`) them.
    pub direction: Direction,
    /// Age of the oldest of them, seconds.
    pub oldest_age_seconds: u64,
    /// Their remote endpoints, most connections first (at most 3).
    pub top_remotes: Vec<RemoteCount>,
    /// The first frame outside the language runtime, the standard library and the C library
    /// (`main.openDB`, not `syscall.connect`); `null` when no frame qualifies or none is named
    /// yet.
    pub leading_function: Option<String>,
    /// The stack, innermost first (inlined functions as frames of their own).
    pub frames: Vec<Frame>,
}

/// Connections without a stack of their own, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Unstacked {
    /// Open before capture began (older than the daemon, or found by a scan).
    pub opened_before_capture: u32,
    /// Opened while the policy did not sample this process's connection.
    pub not_sampled: u32,
    /// Wanted, but no stack arrived: lost in the kernel (see `stacks` in `tracer status`) or
    /// still in the stack ring.
    pub stack_missing: u32,
    /// Held by this process but opened by another (a parent before fork, a passed descriptor):
    /// their stacks are that process's.
    pub held_by_another_process: u32,
}

impl Unstacked {
    pub fn count(&mut self, reason: NoStack) {
        let slot = match reason {
            NoStack::OpenedBeforeCapture => &mut self.opened_before_capture,
            NoStack::NotSampled => &mut self.not_sampled,
            NoStack::StackMissing => &mut self.stack_missing,
            NoStack::HeldByAnotherProcess => &mut self.held_by_another_process,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u32 {
        self.opened_before_capture
            + self.not_sampled
            + self.stack_missing
            + self.held_by_another_process
    }
}

/// Why a connection names no stack group (the fields of [`Unstacked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoStack {
    /// Open before capture began (older than the daemon, or found by a scan).
    OpenedBeforeCapture,
    /// The policy did not sample it.
    NotSampled,
    /// Wanted, but no stack arrived (lost in the kernel, or still in the stack ring).
    StackMissing,
    /// Opened by another process than the one holding it.
    HeldByAnotherProcess,
}

/// The opener stacks of the connections behind a leak alert, symbolized when it raised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AlertStacks {
    /// The connections behind the rule when it raised: for `growth`, those opened in its
    /// window and still open; for `close_wait` and `held_closed`, the stale ones; for `age`,
    /// those past the threshold.
    pub connections: u32,
    /// Their largest stack groups, most connections first (at most 3).
    pub groups: Vec<StackGroup>,
    /// Those of them in the smaller groups not kept: with `groups` and the reasons below,
    /// every one of `connections` is accounted for.
    #[serde(default)]
    pub in_other_groups: u32,
    /// Those of them without a stack, by reason.
    #[serde(flatten)]
    pub unstacked: Unstacked,
    /// The same connections by the stack of their last Go HTTP/1 request, when the process's
    /// requests were probed as the alert raised (`--go-requests`); `null` otherwise. A Go
    /// client's opener stack ends in its Transport: this names the code that requested.
    #[serde(default)]
    pub requests: Option<RequestGroups>,
}

/// Open connections grouped by the stack of their last Go HTTP/1 request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RequestGroups {
    /// Seconds since the request probe was attached to the process.
    pub probed_for_seconds: u64,
    /// The connections grouped: the process's open ones (`tracer stacks`), or those behind the
    /// alert's rule when the groups were taken (evidence).
    #[serde(default)]
    pub connections: u32,
    /// Most connections first; `direction` is that of the connections.
    pub groups: Vec<StackGroup>,
    /// Connections in the smaller groups that evidence does not keep (it keeps 3); always 0
    /// in `tracer stacks`, which lists every group.
    #[serde(default)]
    pub in_other_groups: u32,
    /// Open connections with no request seen that were opened before the probe was attached
    /// (their requests, if any, came before probing).
    pub before_probing: u32,
    /// Open connections opened since, with no request seen (a server's accepted connections,
    /// or a client's not yet used).
    pub no_request: u32,
    /// Open connections whose last request's stack was lost in the kernel (the stack ring was
    /// full): unknown, never blamed on an earlier request.
    pub request_lost: u32,
}
