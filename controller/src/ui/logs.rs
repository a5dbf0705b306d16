//! A step's page and its live log: server-sent events read from the stored log the way
//! `GET /v1/clusters/{name}/logs` reads it (`api::clusters::log_chunk`), ending once the
//! step is finished and all of its log was sent.

use super::auth::Viewer;
use super::clusters::cluster_row;
use super::page::{cluster_href, duration, page, Nav, UiError};
use crate::api::AppState;
use crate::store::clusters::StepRow;
use crate::time::{now_unix, rfc3339};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_shared::state::StepState;
use maud::{html, Markup};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// How often a followed step is read again while nothing new was found.
const POLL: Duration = Duration::from_millis(500);

/// The step `id` of cluster `name`, or a 404 page.
async fn step_of(st: &AppState, name: &str, id: i64) -> Result<StepRow, UiError> {
    let c = cluster_row(st, name).await?;
    st.store
        .step(id)
        .await?
        .filter(|s| s.cluster_id == c.id)
        .ok_or_else(|| UiError::not_found(format!("Cluster `{name}` has no step {id}.")))
}

/// `GET /ui/clusters/{name}/steps/{id}`: what the step is, and its log, which
/// `console.js` fills from `…/log`.
pub async fn step(
    State(st): State<AppState>,
    Viewer(who): Viewer,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Markup, UiError> {
    let s = step_of(&st, &name, id).await?;
    let base = cluster_href(&name);
    let title = format!("{} on {}", s.kind, s.host_name);
    let body = html! {
        p.links { a href=(base) { "← Cluster " (name) } }
        h1 { (title) " " span #step-state class={ "badge st-" (s.state) } { (s.state) } }
        p #step-detail { (detail(&s)) }
        dl.facts {
            dt { "Step" } dd { (s.id) }
            @if let Some(t) = s.started_at { dt { "Started" } dd { (rfc3339(t)) } }
            @if let Some(t) = s.ended_at { dt { "Ended" } dd { (rfc3339(t)) } }
        }
        h2 { "Log " span #stream-status {} }
        pre #log data-stream={ (base) "/steps/" (s.id) "/log" } {}
    };
    Ok(page(Some(&who), &title, Nav::Clusters, body))
}

/// One line about a step's run: attempt, elapsed, exit code and reason.
fn detail(s: &StepRow) -> String {
    let mut d = format!("attempt {}", s.attempt);
    if let Some(a) = s.started_at {
        d.push_str(&format!(
            " · {}",
            duration(s.ended_at.unwrap_or_else(now_unix) - a)
        ));
    }
    if let Some(c) = s.exit_code {
        d.push_str(&format!(" · exit {c}"));
    }
    if let Some(r) = &s.reason {
        d.push_str(&format!(" · {r}"));
    }
    d
}

/// A step that will change no more.
fn finished(state: StepState) -> bool {
    !matches!(
        state,
        StepState::Pending | StepState::Released | StepState::Running
    )
}

/// `GET /ui/clusters/{name}/steps/{id}/log`: the step's log as server-sent events —
/// `log` (a JSON string of text, its id `attempt:offset` so a reconnecting `EventSource`
/// resumes where it was), `attempt` (a retry began: its log starts over), `state`
/// (`{state, detail}` when either changes) and `end` (the step is finished and all its log
/// was sent, or it is gone). The stream also ends when the controller shuts down.
pub async fn stream(
    State(st): State<AppState>,
    Viewer(_): Viewer,
    Path((name, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let s = step_of(&st, &name, id).await?;
    // Streams are bounded in number and in life: each holds a slot, and ends after
    // STREAM_LIFE — the browser's EventSource reconnects (resuming by Last-Event-ID), and
    // the reconnect checks the session again, so a revoked token's streams end by then.
    let Ok(slot) = stream_slots().clone().try_acquire_owned() else {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many console log streams are open; try again shortly",
        )
            .into_response());
    };
    let until = tokio::time::Instant::now() + STREAM_LIFE;
    // A reconnect resumes after the last event it saw; one of an earlier attempt gets the
    // `attempt` event and the new attempt's log from its start, as a live stream would.
    let (attempt, next) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(':'))
        .and_then(|(a, n)| Some((a.parse().ok()?, n.parse().ok()?)))
        .unwrap_or((s.attempt, 0));
    let tail = Tail {
        st,
        id,
        attempt,
        next,
        shown: None,
        queue: VecDeque::new(),
        done: false,
        wait: false,
    };
    let events = futures_util::stream::unfold((tail, slot), move |(mut t, slot)| async move {
        loop {
            if let Some(e) = t.queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), (t, slot)));
            }
            if t.done || tokio::time::Instant::now() >= until {
                return None;
            }
            if t.wait {
                tokio::select! {
                    _ = t.st.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            if let Err(e) = t.read().await {
                tracing::error!(step = t.id, error = ?e, "console: reading a step's log failed");
                let why = "the log could not be read; see the controller's log";
                t.queue.push_back(json_event("end", &Status::gone(why)));
                t.done = true;
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// At most this many console log streams are open at once (each reads the store twice
/// a second).
const MAX_STREAMS: usize = 256;
/// A log stream ends after this; the browser reconnects where it was.
const STREAM_LIFE: std::time::Duration = std::time::Duration::from_secs(300);

fn stream_slots() -> &'static std::sync::Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    SLOTS.get_or_init(|| std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)))
}

/// Where a log stream is.
struct Tail {
    st: AppState,
    id: i64,
    attempt: i64,
    /// The next byte of the attempt's log to send.
    next: u64,
    /// The state and detail line last sent.
    shown: Option<(StepState, String)>,
    queue: VecDeque<Event>,
    done: bool,
    /// Read nothing new last time: pause before the next read.
    wait: bool,
}

/// A step's state and one line about its run, as the page shows them.
#[derive(serde::Serialize)]
struct Status {
    state: String,
    detail: String,
}

impl Status {
    fn of(s: &StepRow) -> Status {
        Status {
            state: s.state.to_string(),
            detail: detail(s),
        }
    }
    fn gone(why: &str) -> Status {
        Status {
            state: "gone".into(),
            detail: why.into(),
        }
    }
}

fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(kind))
}

impl Tail {
    /// Reads the step once and queues what changed since the last read.
    async fn read(&mut self) -> Result<(), crate::api::error::ApiError> {
        let Some(s) = self.st.store.step(self.id).await? else {
            // The cluster was reset and removed: nothing more will come.
            self.queue.push_back(json_event(
                "end",
                &Status::gone("the step no longer exists"),
            ));
            self.done = true;
            return Ok(());
        };
        if s.attempt != self.attempt {
            self.attempt = s.attempt;
            self.next = 0;
            let event = json_event("attempt", &s.attempt).id(format!("{}:0", s.attempt));
            self.queue.push_back(event);
        }
        let mut more = false;
        if s.state != StepState::Pending {
            let chunk = crate::api::clusters::log_chunk(&self.st, &s, self.next).await?;
            if chunk.next != self.next {
                self.next = chunk.next;
                self.queue.push_back(
                    json_event("log", &chunk.data).id(format!("{}:{}", self.attempt, self.next)),
                );
            }
            more = chunk.more;
        }
        let status = Status::of(&s);
        let shown = Some((s.state, status.detail.clone()));
        if finished(s.state) && !more && self.next >= s.log_len.max(0) as u64 {
            self.queue.push_back(json_event("end", &status));
            self.done = true;
        } else if self.shown != shown {
            // Also while it runs: the detail line's elapsed time moves every second.
            self.queue.push_back(json_event("state", &status));
        }
        self.shown = shown;
        // Nothing new arrived: wait before reading again, whatever `more` says.
        self.wait = self.queue.is_empty();
        Ok(())
    }
}
