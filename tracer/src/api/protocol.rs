//! Requests and the envelopes around requests and answers; the answers themselves are in
//! [`super::answers`].
use serde::{Deserialize, Serialize};

use crate::{containers::views::PlacementFilter, names::named_enum};

/// Bumped on any incompatible change to requests or payloads.
pub const API_VERSION: u32 = 7;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status {},
    Top {
        limit: Option<usize>,
        #[serde(default)]
        by: TopBy,
        /// Only processes in these containers, pods, namespaces (API 3).
        #[serde(default, flatten)]
        placement: PlacementFilter,
    },
    Conns {
        pid: Option<u32>,
        remote: Option<String>,
        state: Option<String>,
        #[serde(default, flatten)]
        placement: PlacementFilter,
    },
    Leaks {
        #[serde(default, flatten)]
        placement: PlacementFilter,
    },
    /// The age distribution of one process's open connections.
    Ages {
        pid: u32,
    },
    /// One process's open connections grouped by the stack that opened them.
    Stacks {
        pid: u32,
    },
    /// The live stream of connection events (API 6): an answer `{"streaming":true}`, then one
    /// line per [`crate::trace::TraceLine`] until either side closes.
    Trace {
        #[serde(default, flatten)]
        filter: crate::trace::TraceFilter,
    },
}

named_enum! {
    /// What `tracer top` groups open connections by.
    #[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum TopBy ("grouping") {
        #[default]
        Process => "process",
        Remote => "remote",
        Container => "container",
        Pod => "pod",
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    pub request: Request,
}

/// `{"version":4,"result":ANSWER}` or `{"version":4,"error":"MESSAGE"}` (docs/api.md).
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer's JSON text, as the daemon wrote it from the answer's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
}
