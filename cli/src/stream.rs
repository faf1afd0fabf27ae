//! A job's output as `jobctl` reads it: a `StreamOutput` call that outlives
//! its connection. Once the stream is open (so the gateway took the
//! certificate and knows the job), a lost connection (the gateway restarts,
//! the supervisor behind it restarts, the network drops) opens it again
//! from the first byte not yet delivered, with backoff, for up to
//! [`RESUME_LIMIT`] without progress; bytes the new stream sends again are
//! skipped, so what reaches stdout has no gap and no repeat. Any error
//! before it is open, and other errors later (an unknown job), end it at
//! once: a gateway that drops a connection at once may be refusing the
//! certificate, which retrying would only hide.

use std::time::{Duration, Instant};

use bytes::Bytes;
use jobworker_proto::v1;
use jobworker_proto::v1::output_chunk::Kind;

use crate::client::{Client, is_connection_loss, rpc_error, status_text};
use crate::exit::CliError;
use crate::render::JobView;

/// How long a lost stream is retried without a byte of progress before it
/// is given up.
pub const RESUME_LIMIT: Duration = Duration::from_secs(300);

/// The first and the longest pause between attempts to resume.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// One event of an output stream.
pub enum Event {
    /// Output bytes.
    Data(Bytes),
    /// The job's status at the stream's end.
    End(Box<JobView>),
}

/// A job's output stream, resumed across lost connections.
pub struct OutputStream {
    client: Client,
    id: String,
    follow: bool,
    /// The offset of the next byte to deliver.
    offset: u64,
    /// The call in progress; none after a lost connection, until resumed.
    inner: Option<tonic::Streaming<v1::OutputChunk>>,
}

impl OutputStream {
    /// Opens job `id`'s output from `offset`, following it while it runs
    /// if `follow`. Any error here is final (see the module docs).
    pub async fn open(
        client: &Client,
        id: &str,
        offset: u64,
        follow: bool,
    ) -> Result<Self, CliError> {
        let mut client = client.clone();
        let inner = call(&mut client, id, offset, follow)
            .await
            .map_err(|s| rpc_error(format!("reading the output of job {id}"), &s))?;
        Ok(Self {
            client,
            id: id.to_owned(),
            follow,
            offset,
            inner: Some(inner),
        })
    }

    /// The next event; `None` when the stream ended without the job's
    /// status (a stream that does not follow, past the bytes written).
    pub async fn next(&mut self) -> Result<Option<Event>, CliError> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                self.resume().await?;
                continue;
            };
            let message = match inner.message().await {
                Ok(message) => message,
                Err(status) if is_connection_loss(&status) => {
                    note_loss(&self.id, self.offset, &status);
                    self.inner = None;
                    continue;
                }
                Err(status) => {
                    return Err(rpc_error(
                        format!("reading the output of job {}", self.id),
                        &status,
                    ));
                }
            };
            let Some(chunk) = message else {
                return Ok(None);
            };
            match chunk.kind {
                // An empty message carries nothing: wait for the next.
                None => {}
                Some(Kind::Output(output)) => {
                    if let Some(data) = fresh(&mut self.offset, output) {
                        return Ok(Some(Event::Data(data)));
                    }
                }
                Some(Kind::End(job)) => {
                    return Ok(Some(Event::End(Box::new(crate::jobctl::read_job(job)?))));
                }
            }
        }
    }

    /// Opens the stream again from the next byte, with backoff, until it
    /// opens or [`RESUME_LIMIT`] has passed.
    async fn resume(&mut self) -> Result<(), CliError> {
        let what = format!("reading the output of job {}", self.id);
        let deadline = Instant::now() + RESUME_LIMIT;
        let mut pause = BACKOFF.0;
        loop {
            tokio::time::sleep(pause).await;
            match call(&mut self.client, &self.id, self.offset, self.follow).await {
                Ok(inner) => {
                    self.inner = Some(inner);
                    eprintln!("jobctl: resumed {what} at byte {}", self.offset);
                    return Ok(());
                }
                Err(status) if is_connection_loss(&status) && Instant::now() < deadline => {
                    pause = (pause * 2).min(BACKOFF.1);
                }
                Err(status) => {
                    let error = rpc_error(what, &status);
                    return Err(if is_connection_loss(&status) {
                        CliError::GaveUp {
                            after: RESUME_LIMIT,
                            error: Box::new(error),
                        }
                    } else {
                        error
                    });
                }
            }
        }
    }
}

/// The bytes of `output` from `offset` on (a resumed stream may send some
/// delivered ones again); advances `offset` past them.
fn fresh(offset: &mut u64, output: v1::Output) -> Option<Bytes> {
    let end = output.offset.saturating_add(output.data.len() as u64);
    if end <= *offset {
        return None;
    }
    let skip = usize::try_from(offset.saturating_sub(output.offset)).unwrap_or(0);
    *offset = end;
    Some(output.data.slice(skip.min(output.data.len())..))
}

/// Says on stderr that the stream of job `id` lost its connection, and
/// where it resumes.
fn note_loss(id: &str, offset: u64, lost: &tonic::Status) {
    eprintln!(
        "jobctl: lost the connection while reading the output of job {id} ({}); \
         resuming from byte {offset}",
        status_text(lost)
    );
}

/// The `StreamOutput` call.
async fn call(
    client: &mut Client,
    id: &str,
    offset: u64,
    follow: bool,
) -> Result<tonic::Streaming<v1::OutputChunk>, tonic::Status> {
    client
        .stream_output(v1::StreamOutputRequest {
            job_id: id.to_owned(),
            offset,
            follow: Some(follow),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(offset: u64, data: &[u8]) -> v1::Output {
        v1::Output {
            offset,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_resumed_stream_delivers_each_byte_once() {
        let mut offset = 0;
        assert_eq!(
            fresh(&mut offset, output(0, b"abc")),
            Some(Bytes::from_static(b"abc"))
        );
        // Sent again after a resume: skipped, whole or in part.
        assert_eq!(fresh(&mut offset, output(0, b"abc")), None);
        assert_eq!(
            fresh(&mut offset, output(1, b"bcde")),
            Some(Bytes::from_static(b"de"))
        );
        assert_eq!(offset, 5);
        assert_eq!(fresh(&mut offset, output(5, b"")), None);
        assert_eq!(
            fresh(&mut offset, output(5, b"f")),
            Some(Bytes::from_static(b"f"))
        );
        assert_eq!(offset, 6);
    }
}
