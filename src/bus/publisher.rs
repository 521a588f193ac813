//! The NATS publisher task: connects (retrying with backoff, in the
//! background), creates the stream if missing, then sends the buffer's
//! messages in order, up to [`IN_FLIGHT`] at a time, and removes each only
//! once JetStream acknowledged it. Nothing here is ever awaited by the media
//! path.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use tokio_util::sync::CancellationToken;

use super::config::{NatsAuth, NatsConfig};
use super::outbox::Outbox;
use crate::pipeline::backoff::Backoff;

/// Publishes sent before their acknowledgements are awaited.
const IN_FLIGHT: usize = 64;
/// Limit for one TCP/TLS connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait between connection (or stream set-up) attempts.
const RETRY_INITIAL: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long shutdown waits to send what is buffered.
const FINAL_FLUSH: Duration = Duration::from_millis(500);

/// Runs until `cancel`, then tries to flush for [`FINAL_FLUSH`].
pub(crate) async fn run(config: NatsConfig, auth: NatsAuth, outbox: Outbox, cancel: CancellationToken) {
    let urls = config.urls.join(",");
    let Some(client) = connect(&config, &auth, &outbox, &cancel).await else { return };
    let ack_timeout = Duration::from_millis(config.ack_timeout_ms);
    let js = jetstream::ContextBuilder::new().timeout(ack_timeout).build(client.clone());
    if !ensure_stream(&js, &config, &cancel).await {
        return;
    }
    tracing::info!(%urls, stream = %config.stream, "NATS: publishing labels and camera events");
    let mut retry = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        if outbox.is_empty() {
            tokio::select! {
                () = outbox.pushed() => {}
                () = cancel.cancelled() => break,
            }
            continue;
        }
        if client.connection_state() != async_nats::connection::State::Connected {
            // The client reconnects by itself; sending now would only queue duplicates.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = cancel.cancelled() => break,
            }
            continue;
        }
        let outcome = tokio::select! {
            o = send_batch(&js, &outbox) => o,
            () = cancel.cancelled() => break,
        };
        match outcome {
            Ok(()) => retry.reset(),
            Err(Failure::StreamMissing) => {
                tracing::warn!(stream = %config.stream, "NATS: the stream is gone; creating it again");
                if !ensure_stream(&js, &config, &cancel).await {
                    return;
                }
            }
            Err(Failure::Retry(why)) => {
                let delay = retry.next_delay();
                tracing::debug!(error = %why, retry_in_ms = delay.as_millis() as u64, "NATS: publish not acknowledged");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => break,
                }
            }
        }
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        while !outbox.is_empty() && send_batch(&js, &outbox).await.is_ok() {}
    })
    .await;
}

/// Why a batch stopped short.
enum Failure {
    /// Not acknowledged in time, connection trouble, leader election: send
    /// the same messages again after a pause.
    Retry(String),
    /// No stream listens on the subject (deleted by an operator).
    StreamMissing,
}

/// Sends up to [`IN_FLIGHT`] of the oldest messages, then awaits their
/// acknowledgements in order, removing each acknowledged one.
async fn send_batch(js: &jetstream::Context, outbox: &Outbox) -> Result<(), Failure> {
    let metrics = outbox.metrics();
    let batch = outbox.peek(IN_FLIGHT);
    let mut pending = Vec::with_capacity(batch.len());
    let mut failure = None;
    for m in &batch {
        let publish = PublishMessage::build().payload(m.payload.clone()).message_id(&m.msg_id);
        metrics.published.inc();
        match js.send_publish(m.subject.clone(), publish).await {
            Ok(ack) => pending.push((m, Instant::now(), PendingAck::Future(ack))),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                // Never storable: give up on this one (after those before it).
                tracing::warn!(subject = %m.subject, error = %e, "NATS: message refused for good; dropped");
                pending.push((m, Instant::now(), PendingAck::Refused));
                break;
            }
            Err(e) => {
                failure = Some(classify(e.kind(), e.to_string()));
                break;
            }
        }
    }
    for (m, sent, ack) in pending {
        let ack = match ack {
            PendingAck::Future(f) => f.await,
            PendingAck::Refused => {
                metrics.dropped.inc();
                outbox.remove_through(m.seq);
                continue;
            }
        };
        match ack {
            Ok(ack) => {
                metrics.latency.observe(sent.elapsed().as_secs_f64());
                metrics.acked.inc();
                if ack.duplicate {
                    metrics.duplicates.inc();
                }
                outbox.remove_through(m.seq);
            }
            Err(e) => return Err(classify(e.kind(), e.to_string())),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A sent publish: its acknowledgement to come, or refused before sending.
enum PendingAck {
    Future(jetstream::context::PublishAckFuture),
    Refused,
}

fn classify(kind: PublishErrorKind, message: String) -> Failure {
    match kind {
        PublishErrorKind::StreamNotFound => Failure::StreamMissing,
        _ => Failure::Retry(message),
    }
}

/// Connects, retrying with capped backoff until it works or `cancel`. Logs
/// the first failure and every change of reason at `warn` (never a secret:
/// URLs carry none, see [`NatsConfig::validate`]).
async fn connect(
    config: &NatsConfig,
    auth: &NatsAuth,
    outbox: &Outbox,
    cancel: &CancellationToken,
) -> Option<async_nats::Client> {
    let urls = config.urls.join(",");
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
    let mut last_error = String::new();
    loop {
        let options = match options(config, auth, outbox) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(%urls, error = %e, "NATS: cannot use the configured credentials; not publishing");
                return None;
            }
        };
        let attempt = tokio::select! {
            r = options.connect(config.urls.as_slice()) => r,
            () = cancel.cancelled() => return None,
        };
        match attempt {
            Ok(client) => {
                outbox.metrics().connected.set(1);
                tracing::info!(%urls, "NATS: connected");
                return Some(client);
            }
            Err(e) => {
                let error = e.to_string();
                let delay = backoff.next_delay();
                if error != last_error {
                    tracing::warn!(%urls, %error, retry_in_ms = delay.as_millis() as u64,
                        "NATS: cannot connect; labels are buffered (oldest dropped when full) until it works");
                    last_error = error;
                } else {
                    tracing::debug!(%urls, %error, "NATS: still cannot connect");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return None,
                }
            }
        }
    }
}

/// Client options for `config`: credentials, TLS, time-outs and quick
/// reconnects (100 ms doubling up to 2 s, for ever). Shared with the cluster's
/// own connection.
pub(crate) fn client_options(
    config: &NatsConfig,
    auth: &NatsAuth,
    name: &str,
) -> std::io::Result<async_nats::ConnectOptions> {
    let mut options = match auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
        NatsAuth::Credentials(c) => async_nats::ConnectOptions::with_credentials(c)?,
    };
    if let Some(ca) = &config.tls_ca_path {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options.name(name).connection_timeout(CONNECT_TIMEOUT).max_reconnects(None).reconnect_delay_callback(
        |attempts| Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(2)),
    ))
}

fn options(config: &NatsConfig, auth: &NatsAuth, outbox: &Outbox) -> std::io::Result<async_nats::ConnectOptions> {
    let options = client_options(config, auth, "infercast")?;
    let connected = outbox.metrics().connected.clone();
    let urls = config.urls.join(",");
    // "reconnected" only after a "disconnected" (the first connection is logged by `connect`).
    let was_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    Ok(options.event_callback(move |event| {
        let (connected, urls, was_down) = (connected.clone(), urls.clone(), was_down.clone());
        async move {
            use std::sync::atomic::Ordering;
            match event {
                async_nats::Event::Connected => {
                    connected.set(1);
                    if was_down.swap(false, Ordering::Relaxed) {
                        tracing::info!(%urls, "NATS: reconnected");
                    }
                }
                async_nats::Event::Disconnected => {
                    connected.set(0);
                    was_down.store(true, Ordering::Relaxed);
                    tracing::warn!(%urls, "NATS: disconnected; buffering labels and events");
                }
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        }
    }))
}

/// Creates the stream if missing (retrying until it works or `cancel`);
/// false on `cancel`.
async fn ensure_stream(js: &jetstream::Context, config: &NatsConfig, cancel: &CancellationToken) -> bool {
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec!["labels.>".into(), "events.>".into()],
        num_replicas: config.replicas,
        max_age: Duration::from_secs(config.max_age_s),
        max_bytes: if config.max_bytes == 0 { -1 } else { i64::try_from(config.max_bytes).unwrap_or(i64::MAX) },
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
    loop {
        match js.get_or_create_stream(wanted.clone()).await {
            Ok(mut s) => {
                if let Ok(info) = s.info().await {
                    let subjects = &info.config.subjects;
                    if !["labels.>", "events.>"].iter().all(|w| subjects.iter().any(|s| s == w)) {
                        tracing::warn!(stream = %config.stream, ?subjects,
                            "NATS: the existing stream does not take labels.> and events.>; publishes may fail");
                    }
                }
                return true;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(stream = %config.stream, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "NATS: cannot create or look up the stream");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return false,
                }
            }
        }
    }
}
