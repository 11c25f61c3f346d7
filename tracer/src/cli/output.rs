//! What the query commands write to stdout. `--json` follows one convention on every command
//! (docs/api.md): the API's answer object exactly as the daemon sent it, pretty-printed, then
//! one newline; nothing else goes to stdout, errors go to stderr.
use std::{
    io::{ErrorKind, Write},
    path::Path,
};

use serde::de::DeserializeOwned;
use tracer::api::{
    client::{self, ClientError},
    protocol::Request,
};

/// The `--json` text of the answer to `request`, read as `T` first so that a reply that is not
/// that answer is an error rather than output.
fn json_text<T: DeserializeOwned>(socket: &Path, request: Request) -> anyhow::Result<String> {
    let answer = client::request_value(socket, request)?;
    T::deserialize(&answer).map_err(|e| ClientError::Malformed(e.to_string()))?;
    Ok(serde_json::to_string_pretty(&answer)? + "\n")
}

/// The text a query command prints: the `--json` document when `json`, else `render` of the
/// answer. One place for the choice every query command makes.
pub fn answer<T: DeserializeOwned>(
    socket: &Path,
    request: Request,
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    if json {
        json_text::<T>(socket, request)
    } else {
        Ok(render(&client::request(socket, request)?))
    }
}

/// Writes `text` to stdout; false when the reader went away (`| head`), which is not an error.
pub fn emit(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}
